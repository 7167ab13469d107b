"""Chapter 17's illustrator, trained on one GPU: scenes → attribute classifier (the judge) → VQ-VAE → DiT, then
the quality table (caption accuracy on seen and held-out colour+thing pairs, guidance and step sweeps, Fréchet
distance on the judge's features, sampling time on the GPU and on 2 CPU cores).

    python bench/train_illustrator.py stage1     data, judge, VQ-VAE    (into $RUN, default _build/illustrator_run)
    python bench/train_illustrator.py stage2     latents, DiT, the table (reads stage 1's folder)
    OUT=... gets the models (models/illustrator/ layout; the DiT in fp16) and illustrator.json (-> bench/results/).

Two stages because a device call lasts at most 10 minutes; a warm machine keeps $RUN between them.
SMOKE=1: tiny sizes on a CPU, to check the script end to end.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from storylib import dit as D  # noqa: E402
from storylib import scene_classifier as J  # noqa: E402
from storylib import scenes  # noqa: E402
from storylib import vqvae as V  # noqa: E402
from storylib.illustrate import Illustrator  # noqa: E402
from storylib.train import load_tokenizer  # noqa: E402

SMOKE = os.environ.get("SMOKE") == "1"
RUN = Path(os.environ.get("RUN", "_build/illustrator_run"))  # the models of stage 1, read by stage 2
DATA = Path(os.environ.get("DATA", "_build/illustrator_data"))  # the scenes, drawn once per machine
OUT = Path(os.environ.get("OUT", "_build/illustrator_out"))
DEV = "cuda" if torch.cuda.is_available() and not SMOKE else "cpu"
N = dict(train=2_000, judge_extra=500, val=40, heldout=40, val2=40) if SMOKE else \
    dict(train=120_000, judge_extra=30_000, val=2_000, heldout=2_000, val2=2_000)
# the DiT's steps fit a 10-minute device call on an H100 (~49 ms a step at batch 256); DIT_STEPS=... overrides
STEPS = dict(judge=60, vq=60, dit=60) if SMOKE else dict(judge=4_000, vq=6_000, dit=5_800)
STEPS["dit"] = int(os.environ.get("DIT_STEPS", STEPS["dit"]))
BATCH = dict(judge=16, vq=16, dit=16) if SMOKE else dict(judge=256, vq=128, dit=256)
WORKERS = os.cpu_count() or 1


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def data() -> dict:
    DATA.mkdir(parents=True, exist_ok=True)
    sets = {}
    # the generator trains on "train" only; the judge also on "judge_extra" (held-out pairs: it must know a blue
    # dog when it sees one); "val" and "heldout" (other seeds) are what the table scores; "val2" the real floor
    # of the Fréchet distance
    for name, split, seed in (("train", "train", 1), ("judge_extra", "heldout", 4), ("val", "train", 2),
                              ("heldout", "heldout", 3), ("val2", "train", 5)):
        path = DATA / f"{name}_{N[name]}.npz"
        if path.exists():
            sets[name] = dict(np.load(path, allow_pickle=False))
            continue
        t = time.time()
        d = scenes.make_dataset(N[name], seed, split, 64, workers=WORKERS)
        sets[name] = {"pictures": d["pictures"], "captions": np.array(d["captions"]),
                      "attributes": np.array([json.dumps(a) for a in d["attributes"]])}
        np.savez(path, **sets[name])
        log(f"{name}: {N[name]} scenes in {time.time() - t:.0f} s")
    return sets


def attrs(s: dict) -> list[dict]:
    return [json.loads(a) for a in s["attributes"]]


def stage1() -> None:
    sets = data()
    t = time.time()
    k = 3 * N["judge_extra"]
    pictures = np.concatenate([sets["train"]["pictures"][:k], sets["judge_extra"]["pictures"]])
    labels = attrs(sets["train"])[:k] + attrs(sets["judge_extra"])
    judge, jlog = J.train_classifier(pictures, labels, steps=STEPS["judge"], batch_size=BATCH["judge"], lr=2e-3,
                                     device=DEV, seed=0, progress=False)
    judge_s = time.time() - t
    acc = {k: J.caption_accuracy(judge, sets[k]["pictures"], attrs(sets[k])) for k in ("val", "heldout")}
    jlog = {"final_loss": jlog["loss"][-1]}
    log(f"judge: {judge_s:.0f} s, real pictures: seen {acc['val']['all']:.3f}, held-out {acc['heldout']['all']:.3f}")
    J.save_classifier(judge, RUN / "judge")
    J.save_classifier(judge, OUT / "stage1" / "judge")  # at once: a device call may end before the VQ-VAE does
    (OUT / "stage1" / "judge.json").write_text(json.dumps({"judge_s": judge_s, "judge_real": acc}, default=float))
    t = time.time()
    vq, vlog = V.train_vqvae(sets["train"]["pictures"], V.VQConfig(), steps=STEPS["vq"], batch_size=BATCH["vq"],
                             lr=1e-3, device=DEV, seed=0, progress=False)
    vq_s = time.time() - t
    V.save_vqvae(vq, RUN / "vqvae")
    vq_eval = {k: V.evaluate_vqvae(vq, sets[k]["pictures"]) for k in ("val", "heldout")}
    log(f"vq-vae: {vq_s:.0f} s, last log {vlog[-1]}, eval {vq_eval}")
    stage1 = {"judge_s": judge_s, "judge_real": acc, "judge_log": jlog,
              "vq_s": vq_s, "vq_log": vlog, "vq_eval": vq_eval}
    (RUN / "stage1.json").write_text(json.dumps(stage1, indent=1, default=float))
    shutil.copytree(RUN, OUT / "stage1", dirs_exist_ok=True)  # a device call's files come back only from $OUT


def latents_of(vq, pictures: np.ndarray, batch: int = 1024) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(pictures), batch):
            out.append(vq.latents(V.to_tensor(pictures[i:i + batch]).to(DEV)).float().cpu())  # zq · latent_scale
    return torch.cat(out)


def draw(model, vq, tokens: torch.Tensor, steps: int, guidance: float, seed: int, batch: int = 500) -> np.ndarray:
    """Pictures (uint8) for caption tokens: sample latents, undo the latent scale, snap to codes, decode."""
    pics = []
    for i in range(0, len(tokens), batch):
        g = torch.Generator(DEV).manual_seed(seed + i)
        z = D.sample(model, tokens[i:i + batch].to(DEV), steps=steps, guidance=guidance, generator=g)
        with torch.no_grad():
            pics.append(V.to_pictures(vq.decode_latents(z, snap=True).float().cpu()))
    return np.concatenate(pics)


def cpu_seconds(caption: str, steps: int, guidance: float) -> float:
    """One picture on 2 CPU threads through the product's Illustrator, as a course laptop draws it (median of 3)."""
    ill = Illustrator.load(RUN, "cpu")
    torch.set_num_threads(2)
    times = []
    for r in range(3):
        t = time.perf_counter()
        ill.draw(caption, steps=steps, guidance=guidance, seed=r)
        times.append(time.perf_counter() - t)
    torch.set_num_threads(os.cpu_count() or 1)
    return sorted(times)[1]


def stage2() -> None:
    sets, tok = data(), load_tokenizer("models/storyteller/tokenizer.json")[0]
    vq, judge = V.load_vqvae(RUN / "vqvae", DEV), J.load_classifier(RUN / "judge", DEV)
    cfg = D.DiTConfig(latent_channels=vq.cfg.latent_dim)
    t = time.time()
    x0 = latents_of(vq, sets["train"]["pictures"])
    text = {k: D.encode_captions(tok, list(sets[k]["captions"]), cfg.text_len) for k in ("train", "val", "heldout")}
    log(f"latents {tuple(x0.shape)} in {time.time() - t:.0f} s, std {x0.std():.3f}")
    t = time.time()
    model, dlog = D.train_dit(x0, text["train"], cfg, steps=STEPS["dit"], batch_size=BATCH["dit"], lr=3e-4,
                              device=DEV, seed=0, progress=False)
    dit_s = time.time() - t
    D.save_dit(model, RUN / "dit")
    half = OUT / "illustrator" / "dit"  # before the table, in case of time; fp16 (a device call returns < 50 MB)
    half.mkdir(parents=True, exist_ok=True)
    shutil.copy(RUN / "dit" / "dit.json", half)
    from safetensors.torch import load_file, save_file
    save_file({k: v.half() for k, v in load_file(RUN / "dit" / "dit.safetensors").items()}, half / "dit.safetensors")
    log(f"dit: {dit_s:.0f} s, last log {dlog[-1]}")
    feats_real = J.picture_features(judge, sets["val"]["pictures"])
    rows = []
    sweep = [(25, g) for g in (1.0, 2.0, 3.0, 4.0, 6.0)] + [(s, 3.0) for s in (5, 10, 50)]
    for steps, guidance in sweep[:2] if SMOKE else sweep:
        row = {"steps": steps, "guidance": guidance}
        t = time.time()
        for k in ("val", "heldout"):
            pics = draw(model, vq, text[k], steps, guidance, seed=7)
            acc = J.caption_accuracy(judge, pics, attrs(sets[k]))
            row[k] = acc
            if k == "val":
                row["frechet"] = J.frechet_distance(J.picture_features(judge, pics), feats_real)
        row["gpu_s_per_picture"] = (time.time() - t) / (len(text["val"]) + len(text["heldout"]))
        rows.append(row)
        log(f"steps {steps} guidance {guidance}: seen {row['val']['all']:.3f} held-out {row['heldout']['all']:.3f}"
            f" frechet {row['frechet']:.2f}")
    best = max(rows, key=lambda r: r["val"]["all"] + r["heldout"]["all"])
    cpu = {f"{s}_steps": cpu_seconds(str(sets["val"]["captions"][0]), s, best["guidance"]) for s in (10, 25)}
    stage1 = json.loads((RUN / "stage1.json").read_text())
    result = {"card": torch.cuda.get_device_name() if DEV == "cuda" else "cpu", "date": time.strftime("%Y-%m-%d"),
              "n": N, "steps": STEPS,
              "judge_real": stage1["judge_real"], "judge_s": stage1["judge_s"],
              "vq_s": stage1["vq_s"], "vq_final": stage1["vq_log"][-1], "dit_s": dit_s, "dit_final": dlog[-1],
              "sweep": rows, "best": best, "cpu_seconds_per_picture": cpu,
              "frechet_real_vs_real": J.frechet_distance(J.picture_features(judge, sets["val2"]["pictures"]),
                                                         feats_real)}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "illustrator.json").write_text(json.dumps(result, indent=1, default=float))
    for name in ("vqvae", "judge"):
        shutil.copytree(RUN / name, OUT / "illustrator" / name, dirs_exist_ok=True)
    log(json.dumps({"best": best, "cpu": cpu}, default=float))


def main() -> None:
    stage = sys.argv[1] if len(sys.argv) > 1 else "stage1"
    log(f"{stage} on {torch.cuda.get_device_name() if DEV == 'cuda' else 'cpu'}")
    {"stage1": stage1, "stage2": stage2}[stage]()


if __name__ == "__main__":
    main()
