"""python -m storylib.web export OUT_DIR: see storylib/web/__init__.py."""

from storylib.web import main

raise SystemExit(main())
