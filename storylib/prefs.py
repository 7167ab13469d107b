"""Your own preference data: the thumbs up / down given in the web app and the chat widget, as Chapter 15 trains on.

The web app (`llm101n serve`) keeps its ratings with its conversations; the chat widget (StoryChat) in a store of
its own (storylib.service.default_feedback_path). Both are storylib.service.ConversationStore files: a rating
belongs to a reply and the messages before it (its request), and a regenerated reply is kept as an alternative of
the new one. This module turns them into

    preference_pairs    one {"messages", "chosen", "rejected", "source"} per (liked, disliked) pair of replies to the
                        same request (the same messages before them): the JSONL pair format that
                        storylib.preferences reads (DPO, the reward model)
    rated_examples      one {"messages", "reply", "rating", "source"} per rated reply: unpaired feedback, for
                        KTO-style training (Ethayarajh et al., 2024), which needs no pairs
    export              either, from several databases, into a JSONL file

    llm101n prefs export [--db PATH ...] [--out FILE] [--ratings]          (see `llm101n prefs export --help`)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from storylib.service import ConversationStore, StoreError, default_db_path, default_feedback_path


def _requests(rows: Iterable[dict]) -> dict[str, dict[str, dict]]:
    """The rated replies by request (prefix_key), each request's replies by text: a reply rated more than once
    (in two conversations with the same request) counts once, with its latest rating (rows come oldest first).
    Replies to no request (the messages before them do not end with the user's) are left out."""
    out: dict[str, dict[str, dict]] = {}
    for r in rows:
        if r["messages"] and r["messages"][-1]["role"] == "user":
            out.setdefault(r["prefix_key"], {})[r["content"]] = r
    return out


def preference_pairs(rows: Iterable[dict]) -> list[dict]:
    """Pairs from rated replies (ConversationStore.rated_replies rows): for each request, every liked reply
    against every disliked one, in the order they were rated; a request with likes only or dislikes only gives
    none. Each pair: {"messages": the request's conversation, "chosen", "rejected", "source"} (the source of both
    replies, "web" or "widget"; "web+widget" when a request asked in both places pairs across them)."""
    pairs = []
    for replies in _requests(rows).values():
        liked = [r for r in replies.values() if r["rating"] > 0]
        disliked = [r for r in replies.values() if r["rating"] < 0]
        for good in liked:
            for bad in disliked:
                source = good["source"] if good["source"] == bad["source"] else f"{good['source']}+{bad['source']}"
                pairs.append({"messages": good["messages"], "chosen": good["content"], "rejected": bad["content"],
                              "source": source})
    return pairs


def rated_examples(rows: Iterable[dict]) -> list[dict]:
    """Every rated reply on its own: {"messages", "reply", "rating": 1 | -1, "source"}, oldest rating first."""
    return [{"messages": r["messages"], "reply": r["content"], "rating": r["rating"], "source": r["source"]}
            for replies in _requests(rows).values() for r in replies.values()]


def read_ratings(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """The rated replies of these databases, oldest rating first. FileNotFoundError for a path that is not there
    (nothing is created); StoreError for one that is not a conversation database. An older schema is migrated
    in place, as the server would."""
    rows = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"there is no database at {path}")
        store = ConversationStore(path)
        try:
            rows += store.rated_replies()
        finally:
            store.close()
    return sorted(rows, key=lambda r: r["rated"])


def to_jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def export(paths: Sequence[str | os.PathLike], out: str | os.PathLike, ratings: bool = False) -> tuple[int, int]:
    """Write the pairs (ratings: the rated replies) of the databases `paths` to `out` as JSONL; an empty file when
    there are none. Returns (lines written, rated replies read). Errors as read_ratings; nothing is written then."""
    rows = read_ratings(paths)
    lines = rated_examples(rows) if ratings else preference_pairs(rows)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")  # written whole, then renamed: an earlier export is never half replaced
    tmp.write_text(to_jsonl(lines), encoding="utf-8")
    tmp.replace(out)
    return len(lines), len(rows)


def default_paths() -> list[Path]:
    """The web app's database and the chat widget's feedback file, those that exist."""
    return [p for p in (default_db_path(), default_feedback_path()) if p.is_file()]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="llm101n prefs", description="Your thumbs up / down, as training data.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="write your rated replies as preference pairs (JSONL)",
                       description="Write the replies you rated in the web app and the chat widget as JSONL.\n\n"
                       "Default: preference pairs, one line per (liked, disliked) pair of replies to the same request "
                       "(the same messages before them: regenerate a reply, then rate both): {\"messages\", "
                       "\"chosen\", \"rejected\", \"source\": \"web\" | \"widget\"}, the format Chapter 15's DPO and "
                       "reward model train on (storylib.preferences.load_pairs). A rated reply without a counterpart "
                       "of the other rating is left out.\n\n--ratings: every rated reply on its own, {\"messages\", "
                       "\"reply\", \"rating\": 1 | -1, \"source\"}, for KTO-style training, which needs no pairs.")
    e.add_argument("--db", action="append", default=None, metavar="PATH",
                   help=f"a conversation database (repeatable; default: the web app's, {default_db_path()}, and the "
                        f"chat widget's, {default_feedback_path()} ($LLM101N_FEEDBACK_DB), those that exist)")
    e.add_argument("--out", default=None, metavar="FILE",
                   help="where to write (default: preferences.jsonl, with --ratings ratings.jsonl)")
    e.add_argument("--ratings", action="store_true",
                   help="export single rated replies {messages, reply, rating} (KTO-style) instead of pairs")
    args = p.parse_args(argv)
    paths = args.db if args.db is not None else default_paths()
    out = args.out or ("ratings.jsonl" if args.ratings else "preferences.jsonl")
    try:
        n, rated = export(paths, out, ratings=args.ratings)
    except (FileNotFoundError, StoreError) as err:
        print(f"llm101n prefs: {err}", file=sys.stderr)
        return 2
    what = f"{n} rated {'reply' if n == 1 else 'replies'}" if args.ratings else f"{n} pair{'' if n == 1 else 's'}"
    where = ", ".join(str(x) for x in paths) or "no database yet"
    print(f"llm101n prefs: {what} from {rated} rated {'reply' if rated == 1 else 'replies'} ({where}) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
