"""Chapter 15's table: the SFT chat storyteller vs DPO, PPO on a learned reward model, GRPO on the programmatic
reward (and PPO without KL: reward hacking), on held-out prompts, on one GPU.

    OUT=DIR python bench/rl.py [--stages prefs,rm,dpo,idpo,ppo,grpo,hack,eval] [--data DIR] [--chat MODEL]
        [--eval-methods dpo,idpo] [--keep bench/results/rl_h100.json]
    RL_SCALE=tiny python bench/rl.py        # a CPU smoke run of every stage (~2 minutes)
    RL_PPO_STEPS=60 ... python bench/rl.py  # any size in SIZES, by name, from the environment

Stages (each prints its progress and seconds, writes its files into $OUT at once, and reads what earlier stages
wrote there, so a run can be split over calls: on an H100 `--stages prefs,rm,dpo,ppo` (~8 min), then
`--stages grpo,hack,eval` (~7 min) with $OUT's files carried over, or `--stages prefs,rm,dpo,idpo,eval
--eval-methods dpo,idpo --keep bench/results/rl_h100.json` (~8 min); PPO, GRPO and the hacking run also stop
at RL_PPO_SECONDS / RL_GRPO_SECONDS / RL_HACK_SECONDS of training):
  prefs  training prompts (the create/refine turns of conversations made from TRAINING stories, storylib.
         conversations.split_conversations) and held-out prompts (the conversations of the first N validation
         stories, as `llm101n sft eval` and bench/sft.py make them: no training step sees them); k sampled replies
         each from the SFT model, scored by the programmatic reward → pairs_train.jsonl.gz, pairs_heldout.jsonl.gz
  rm     reward models (the chat model's trunk + a scalar head, Bradley–Terry), one per rm_variants (pooling /
         trainable top blocks / lr), each stopped early on a validation split of the training requests; the best
         on validation → rm.safetensors (split in parts under 16 MiB); every variant's held-out pair accuracy (also
         by reward gap), and the kept one's correlation with the programmatic reward
  dpo    DPO on the training pairs → adapters/dpo/
  idpo   iterative on-policy DPO: DPO as above, then idpo_rounds rounds of: idpo_k replies from the current policy to
         idpo_prompts fresh training requests, ranked by the programmatic reward, paired, idpo_steps DPO steps
         (reference: the SFT model) → adapters/idpo/; no round that would end after idpo_seconds, nor one that
         would leave the eval stage less than eval_reserve of call_seconds
  ppo    PPO on the reward model (standardised), KL leash β = PPO_KL → adapters/ppo/
  grpo   GRPO on the programmatic reward → adapters/grpo/
  hack   PPO on the reward model with β = 0 and a 3× learning rate: reward hacking (RM score vs programmatic reward
         over steps, sample replies) → adapters/ppo_no_kl/
  eval   SFT and every adapter (of --eval-methods) on the held-out prompts: mean programmatic reward, each rule's
         pass rate, KL to SFT, plain-story bits/byte drift, GPU minutes; the best method (the highest reward
         within the KL budget and the drift limit) → storyteller-rl/ (storylib.sft.load_chat_model reads it)
$OUT/rl_h100.json holds the settings, every stage's log and the table (copy it to bench/results/rl_h100.json);
$OUT/rl_records.json every held-out reply of the evaluation. --eval-methods: the methods the eval stage runs (SFT
always); --keep FILE: start from an earlier results file, so that the stages and table rows this call does not
redo stay, each with its run_date (the best method is chosen among all rows; storyteller-rl/ among this call's).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZES = {  # the GPU run; RL_SCALE=tiny: the CPU smoke run
    "full": dict(seed=0, n_train_stories=2000, n_train_tasks=3000, k=4, min_gap=0.1, n_heldout=300, n_plain=500,
                 gen_batch=1024, eval_batch=128, max_new_tokens=480, rollout_tokens=384, rl_max_prompt=256,
                 rm_steps=400, rm_batch=32, rm_variants="last/all/5e-5,mean/4/1e-4", rm_val_fraction=0.1,
                 rm_eval_every=50, rm_patience=3, rm_weight_decay=0.0, rm_head_dropout=0.0,
                 dpo_steps=250, dpo_batch=32, dpo_lr=2e-4, dpo_beta=0.1,
                 lora_r=8, lora_alpha=16.0,
                 ppo_steps=60, ppo_prompts=256, ppo_minibatch=64, ppo_epochs=2, ppo_lr=2e-4, ppo_kl=0.05,
                 ppo_seconds=100,
                 grpo_steps=60, grpo_prompts=64, grpo_group=8, grpo_minibatch=64, grpo_epochs=2, grpo_lr=3e-4,
                 grpo_kl=0.05, grpo_seconds=220,
                 hack_steps=40, hack_prompts=128, hack_lr=6e-4, hack_seconds=45,
                 idpo_stories=2400, idpo_rounds=3, idpo_prompts=800, idpo_k=4, idpo_min_gap=0.1, idpo_all_pairs=1,
                 idpo_steps=120, idpo_beta=0.1, idpo_lr=2e-4, idpo_length_norm=0, idpo_check=256, idpo_kl_stop=8.0,
                 idpo_seconds=240, call_seconds=480, eval_reserve=45,
                 kl_budget=10.0, bpb_drift=0.05),
    "tiny": dict(seed=0, n_train_stories=16, n_train_tasks=6, k=2, min_gap=0.0, n_heldout=3, n_plain=3,
                 gen_batch=16, eval_batch=8, max_new_tokens=20, rollout_tokens=16, rl_max_prompt=256,
                 rm_steps=2, rm_batch=3, rm_variants="last/all/5e-5,mean/1/1e-4", rm_val_fraction=0.3,
                 rm_eval_every=1, rm_patience=3, rm_weight_decay=0.0, rm_head_dropout=0.0,
                 dpo_steps=2, dpo_batch=3, dpo_lr=2e-4, dpo_beta=0.1,
                 lora_r=2, lora_alpha=4.0,
                 ppo_steps=2, ppo_prompts=3, ppo_minibatch=2, ppo_epochs=1, ppo_lr=1e-4, ppo_kl=0.05,
                 ppo_seconds=120,
                 grpo_steps=2, grpo_prompts=2, grpo_group=2, grpo_minibatch=2, grpo_epochs=1, grpo_lr=1e-4,
                 grpo_kl=0.04, grpo_seconds=120,
                 hack_steps=2, hack_prompts=2, hack_lr=3e-4, hack_seconds=120,
                 idpo_stories=12, idpo_rounds=2, idpo_prompts=3, idpo_k=2, idpo_min_gap=0.0, idpo_all_pairs=1,
                 idpo_steps=2, idpo_beta=0.1, idpo_lr=2e-4, idpo_length_norm=0, idpo_check=2, idpo_kl_stop=8.0,
                 idpo_seconds=300, call_seconds=3600, eval_reserve=60,
                 kl_budget=10.0, bpb_drift=0.05),
}
STAGES = ("prefs", "rm", "dpo", "idpo", "ppo", "grpo", "hack", "eval")
METHODS = ("dpo", "idpo", "ppo", "grpo", "ppo_no_kl")  # ppo_no_kl (reward hacking) is shown, never shipped
SHIPPABLE = ("dpo", "idpo", "ppo", "grpo")
PART = 12 << 20  # files that come back from a GPU machine stay under 16 MiB


def sizes() -> dict:
    scale = os.environ.get("RL_SCALE", "full")
    if scale not in SIZES:
        sys.exit(f"bench/rl.py: RL_SCALE must be one of {sorted(SIZES)}, got {scale!r}")
    out = dict(SIZES[scale], scale=scale)
    for k, v in SIZES[scale].items():
        env = os.environ.get(f"RL_{k.upper()}")
        if env is not None:
            out[k] = type(v)(env)
    return out


class Bench:
    """The run's state: settings, data, models, and the results file it keeps up to date."""

    def __init__(self, args: argparse.Namespace):
        import torch

        from storylib.sft import load_chat_model

        self.t0 = time.time()  # the call's start: stage idpo leaves eval_reserve of call_seconds to the eval stage
        self.S, self.out, self.chat = sizes(), Path(args.out), args.chat
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        os.environ["STORYLIB_DATA"] = str(Path(args.data).resolve())
        if (ROOT / ".assets" / "tiktoken").is_dir():
            os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(ROOT / ".assets" / "tiktoken"))
        self.file = self.out / "rl_h100.json"
        self.results = json.loads(self.file.read_text()) if self.file.exists() else {}
        if not self.results and args.keep:  # an earlier run's stages and table rows, each marked with its date
            self.results = json.loads(Path(args.keep).read_text())
            for row in (*self.results.get("stages", {}).values(), *self.results.get("table", {}).values(),
                        *self.results.get("calls", [])):
                row.setdefault("run_date", self.results["date"])
        self.results.update({
            "card": torch.cuda.get_device_name() if self.device == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "date": datetime.datetime.now(datetime.UTC).isoformat(),
            "chat_model": self.chat, "settings": self.S})
        self.results.setdefault("stages", {})
        torch.manual_seed(self.S["seed"])
        self.eval_methods = [m for m in (args.eval_methods or ",".join(METHODS)).split(",") if m]
        self.sft, self.tok = load_chat_model(self.chat, device=self.device)
        self.sft.requires_grad_(False)
        self._tasks: dict[str, list] = {}

    def save(self) -> None:
        self.file.write_text(json.dumps(self.results, indent=1))

    def stage(self, name: str, info: dict, seconds: float) -> None:
        self.results["stages"][name] = {**info, "seconds": round(seconds, 1), "run_date": self.results["date"]}
        self.save()
        short = {k: v for k, v in info.items() if not isinstance(v, list | dict)}
        print(f"== {name}: {seconds:.0f} s {json.dumps(short)}", flush=True)

    def tasks(self, which: str) -> list[dict]:
        """Training or held-out tasks (storylib.preferences.rl_tasks), made the same way every call."""
        if which not in self._tasks:
            from storylib.conversations import build_conversations, split_conversations
            from storylib.data import load_stories
            from storylib.preferences import rl_tasks

            block = self.sft.config.block_size
            if which == "train":
                convs, _ = split_conversations(load_stories("train", limit=self.S["n_train_stories"]), seed=0)
                tasks = rl_tasks(convs, self.tok, block)[: self.S["n_train_tasks"]]
            else:
                tasks = rl_tasks(build_conversations(load_stories("valid", limit=self.S["n_heldout"]), seed=0),
                                 self.tok, block)
            self._tasks[which] = tasks
        return self._tasks[which]

    def idpo_tasks(self) -> list[list[dict]]:
        """Iterative DPO's fresh prompts: the training conversations of the idpo_stories training stories after the
        prefs stage's, shuffled (seeded), idpo_prompts per round for idpo_rounds rounds, then idpo_check more (the
        last measurement). No round sees another's prompts, nor the prefs stage's."""
        import random

        from storylib.conversations import split_conversations
        from storylib.data import load_stories
        from storylib.preferences import rl_tasks

        S, n0 = self.S, self.S["n_train_stories"]
        convs, _ = split_conversations(load_stories("train", limit=n0 + S["idpo_stories"])[n0:], seed=0)
        tasks = rl_tasks(convs, self.tok, self.sft.config.block_size)
        random.Random(S["seed"]).shuffle(tasks)
        n, R = S["idpo_prompts"], S["idpo_rounds"]
        if len(tasks) < n * R + S["idpo_check"]:
            print(f"idpo: only {len(tasks)} fresh tasks for {R} rounds of {n} and {S['idpo_check']}: "
                  f"rounds get {len(tasks) // (R + 1)}", flush=True)
            n = len(tasks) // (R + 1)
        return [tasks[i * n:(i + 1) * n] for i in range(R)] + [tasks[R * n:R * n + S["idpo_check"]]]

    def rl_train_tasks(self) -> list[dict]:
        """The training tasks whose prompt leaves room for a whole story (rl_max_prompt tokens at most): PPO's and
        GRPO's rollouts."""
        return [t for t in self.tasks("train") if len(t["prompt"]) <= self.S["rl_max_prompt"]]

    def plain_stories(self) -> list[str]:
        from storylib.data import load_stories

        return load_stories("valid", limit=self.S["n_heldout"] + self.S["n_plain"])[self.S["n_heldout"]:]

    def policy(self):
        from storylib import rlhf

        return rlhf.make_policy(self.sft, r=self.S["lora_r"], alpha=self.S["lora_alpha"])

    def save_adapter(self, policy, name: str, extra: dict) -> Path:
        from storylib import rlhf

        return rlhf.save_rl_adapter(policy, self.out / "adapters" / name, base=self.chat,
                                    extra={"method": name, **extra})

    def sync(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()

    # ------------------------------------------------------------------------- the reward model's weights

    def save_rm(self, rm) -> None:
        import torch
        from safetensors.torch import save

        data = save({k: v.detach().to(torch.float16).cpu().contiguous() for k, v in rm.state_dict().items()
                     if not k.endswith("lm_head.weight")})  # tied to wte
        for old in self.out.glob("rm.safetensors.part-*"):
            old.unlink()
        for n, i in enumerate(range(0, len(data), PART)):
            (self.out / f"rm.safetensors.part-{n:02d}").write_bytes(data[i:i + PART])

    def load_rm(self):
        import torch
        from safetensors.torch import load

        from storylib import rlhf

        parts = sorted(self.out.glob("rm.safetensors.part-*"))
        if not parts:
            sys.exit(f"bench/rl.py: no reward model in {self.out} (run the rm stage first)")
        rm = rlhf.reward_model_from(self.sft, self.results["stages"].get("rm", {}).get("pooling", "last"))
        state = load(b"".join(p.read_bytes() for p in parts))
        missing, unexpected = rm.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=False)
        if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
            sys.exit(f"bench/rl.py: the saved reward model does not fit: {missing} {unexpected}")
        return rm.to(self.device).eval()


# ----------------------------------------------------------------------------- the stages


def stage_prefs(b: Bench) -> None:
    from storylib import preferences as P

    S, t = b.S, time.time()
    info = {}
    for which in ("train", "heldout"):
        tasks = b.tasks(which)
        t1 = time.time()
        replies = P.sample_replies(b.sft, b.tok, tasks, S["k"], seed=S["seed"] + (which == "heldout"),
                                   batch_size=S["gen_batch"], max_new_tokens=S["max_new_tokens"])
        scores = P.score_replies(tasks, replies)
        pairs = P.make_pairs(tasks, replies, scores, min_gap=S["min_gap"], all_pairs=True)
        P.save_pairs(b.out / f"pairs_{which}.jsonl.gz", pairs)
        flat = [s for ss in scores for s in ss]
        info[which] = {"tasks": len(tasks), "replies": len(flat), "pairs": len(pairs),
                       "mean_reward": sum(flat) / len(flat), "sample_seconds": round(time.time() - t1, 1),
                       "kinds": {k: sum(t["spec"]["kind"] == k for t in tasks)
                                 for k in sorted({t["spec"]["kind"] for t in tasks})},
                       "tied_tasks": sum(max(ss) - min(ss) < max(S["min_gap"], 1e-9) for ss in scores)}
        if which == "train":
            info["examples"] = [{"request": tasks[i]["messages"][-1]["content"], "spec": tasks[i]["spec"],
                                 "replies": [r["text"] for r in replies[i]], "scores": scores[i]}
                                for i in range(min(3, len(tasks)))]
        print(f"prefs {which}: {info[which]}", flush=True)
    b.stage("prefs", info, time.time() - t)


def _pairs(b: Bench, which: str) -> list[dict]:
    from storylib.preferences import load_pairs

    path = b.out / f"pairs_{which}.jsonl.gz"
    if not path.exists():
        sys.exit(f"bench/rl.py: {path} is missing (run the prefs stage first)")
    return load_pairs(path)


def rm_variants(spec: str) -> list[dict]:
    """"last/all/5e-5,mean/4/1e-4" → the reward models to train: pooling / trainable top blocks (all: every weight)
    / learning rate each."""
    out = []
    for item in (v for v in spec.split(",") if v):
        pooling, layers, lr = item.split("/")
        out.append({"name": item, "pooling": pooling, "train_layers": None if layers == "all" else int(layers),
                    "lr": float(lr)})
    return out


def stage_rm(b: Bench) -> None:
    """Each of rm_variants trained on the training pairs less a validation split (rm_val_fraction of the training
    REQUESTS), stopped early on it; the one with the best validation accuracy is kept (the held-out pairs choose
    nothing: their accuracy is reported for every variant)."""
    from storylib import preferences as P
    from storylib import rlhf

    S = b.S
    train, heldout = _pairs(b, "train"), _pairs(b, "heldout")
    fit, val = rlhf.split_pairs(train, S["rm_val_fraction"], seed=S["seed"])
    t = time.time()
    variants, rm, best = [], None, None
    for v in rm_variants(S["rm_variants"]):
        b.sync()
        t1 = time.time()
        model = rlhf.reward_model_from(b.sft, v["pooling"])
        log = rlhf.train_reward_model(model, fit, b.tok, S["rm_steps"], batch_size=S["rm_batch"], lr=v["lr"],
                                      seed=S["seed"], weight_decay=S["rm_weight_decay"],
                                      head_dropout=S["rm_head_dropout"], train_layers=v["train_layers"],
                                      val_pairs=val, eval_every=S["rm_eval_every"], patience=S["rm_patience"] or None)
        b.sync()
        checks = [e for e in log if "val_accuracy" in e]
        info = {**v, "train_seconds": round(time.time() - t1, 1), "steps_done": len(log),
                "best_val_step": log[-1].get("best_val_step"),
                "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "accuracy_val": max((e["val_accuracy"] for e in checks), default=None),
                "accuracy_train": rlhf.pair_accuracy(model, fit[:1000], b.tok),
                "accuracy_heldout": rlhf.pair_accuracy(model, heldout, b.tok),
                "accuracy_by_gap_heldout": rlhf.accuracy_by_gap(model, heldout, b.tok),
                "checks": [{k: e[k] for k in ("step", "val_accuracy", "val_loss")} for e in checks],
                "log": log[:: max(1, len(log) // 100)]}
        print(f"rm {v['name']}: {({k: x for k, x in info.items() if not isinstance(x, list | dict)})}", flush=True)
        variants.append(info)
        if best is None or (info["accuracy_val"] or 0) > (best["accuracy_val"] or 0):
            best, rm = info, model
    b.save_rm(rm)
    # the held-out replies: fresh samples of the SFT model (not the pairs' texts), scored both ways
    tasks = b.tasks("heldout")
    replies = P.sample_replies(b.sft, b.tok, tasks, 1, seed=S["seed"] + 7, batch_size=S["gen_batch"],
                               max_new_tokens=S["max_new_tokens"])
    flat = [(r["ids"], r["stopped"]) for rs in replies for r in rs]
    rules = [s[0] for s in P.score_replies(tasks, replies)]
    scores = rlhf.rm_scores(rm, tasks, flat, b.tok)
    norm = rm.score(*_pair_inputs(train[:512], b), b.tok)
    info = {"train_seconds": round(sum(v["train_seconds"] for v in variants), 1), "pairs_train": len(fit),
            "pairs_val": len(val), "pairs_heldout": len(heldout), "chosen": best["name"], "pooling": best["pooling"],
            "accuracy_train": best["accuracy_train"], "accuracy_val": best["accuracy_val"],
            "accuracy_heldout": best["accuracy_heldout"], "accuracy_by_gap_heldout": best["accuracy_by_gap_heldout"],
            "correlation_heldout": rlhf.correlation(scores, rules), "n_correlation": len(rules),
            "norm": {"mean": float(norm.mean()), "std": float(norm.std().clamp(min=1e-3))},
            "variants": variants, "log": best["log"]}
    b.stage("rm", info, time.time() - t)


def _pair_inputs(pairs: list[dict], b: Bench) -> tuple[list, list]:
    """Prompts and replies (chosen and rejected) of pairs, for scoring them one by one."""
    from storylib.rlhf import pair_rows

    rows = [r for r in (pair_rows(p, b.tok, b.sft.config.block_size) for p in pairs) if r]
    return [r[0] for r in rows] * 2, [r[1] for r in rows] + [r[2] for r in rows]


def stage_dpo(b: Bench) -> None:
    from storylib import rlhf

    S = b.S
    train = _pairs(b, "train")
    policy, ref = b.policy(), rlhf.frozen(b.sft)
    b.sync()
    t = time.time()
    log = rlhf.train_dpo(policy, ref, train, b.tok, S["dpo_steps"], beta=S["dpo_beta"], batch_size=S["dpo_batch"],
                         lr=S["dpo_lr"], seed=S["seed"])
    b.sync()
    b.save_adapter(policy, "dpo", {"beta": S["dpo_beta"], "steps": S["dpo_steps"]})
    b.stage("dpo", {"train_seconds": round(time.time() - t, 1), "log": log[:: max(1, len(log) // 100)],
                    "final": log[-1]}, time.time() - t)


def stage_idpo(b: Bench) -> None:
    """Round 0: DPO on the prefs stage's pairs (the SFT model's replies: on-policy while the policy is still the
    SFT model), as the dpo stage; then idpo_rounds rounds of rlhf.train_iterative_dpo on fresh prompts."""
    from storylib import rlhf

    S = b.S
    train = _pairs(b, "train")
    *rounds, check = b.idpo_tasks()
    policy, ref = b.policy(), rlhf.frozen(b.sft)
    b.sync()
    t = time.time()
    log0 = rlhf.train_dpo(policy, ref, train, b.tok, S["dpo_steps"], beta=S["dpo_beta"], batch_size=S["dpo_batch"],
                          lr=S["dpo_lr"], seed=S["seed"])
    b.sync()
    first = {"round": "offline", "pairs": len(train), "train_seconds": round(time.time() - t, 1),
             **{m: float(sum(e[m] for e in log0[-10:]) / len(log0[-10:])) for m in ("loss", "margin", "accuracy")}}
    print(f"idpo offline round: {first}", flush=True)
    log = rlhf.train_iterative_dpo(
        policy, ref, rounds, b.tok, k=S["idpo_k"], min_gap=S["idpo_min_gap"], all_pairs=bool(S["idpo_all_pairs"]),
        steps=S["idpo_steps"], beta=S["idpo_beta"], batch_size=S["dpo_batch"], lr=S["idpo_lr"],
        length_norm=bool(S["idpo_length_norm"]), seed=S["seed"], sample_batch=S["gen_batch"],
        max_new_tokens=S["max_new_tokens"], check_tasks=check, kl_stop=S["idpo_kl_stop"],
        max_seconds=min(S["idpo_seconds"] - (time.time() - t),
                        S["call_seconds"] - S["eval_reserve"] - (time.time() - b.t0)))
    b.sync()
    done = sum(isinstance(e["round"], int) and "pairs" in e for e in log)
    done -= any(e.get("stopped", "").startswith("KL") for e in log) and done > 0  # that round's training undone
    b.save_adapter(policy, "idpo", {"beta": S["idpo_beta"], "offline_steps": S["dpo_steps"], "rounds": done,
                                    "steps_per_round": S["idpo_steps"], "reference": "SFT"})
    b.stage("idpo", {"train_seconds": round(time.time() - t, 1), "rounds_done": done, "offline": first,
                     "rounds": log, "log": log0[:: max(1, len(log0) // 100)]}, time.time() - t)


def _ppo(b: Bench, name: str, kl: float, lr: float, steps: int, prompts: int, seconds: float) -> None:
    from storylib import rlhf

    S = b.S
    rm_info = b.results["stages"].get("rm")
    if not rm_info:
        sys.exit("bench/rl.py: the rm stage's results are missing from rl_h100.json (run the rm stage first)")
    rm = b.load_rm()
    reward_fn = rlhf.rm_reward_fn(rm, b.tok, rm_info["norm"]["mean"], rm_info["norm"]["std"])
    policy, ref = b.policy(), rlhf.frozen(b.sft)
    b.sync()
    t = time.time()
    log = rlhf.train_ppo(policy, ref, reward_fn, b.rl_train_tasks(), b.tok, steps, n_prompts=prompts, kl_coef=kl,
                         lr=lr, epochs=S["ppo_epochs"], minibatch=S["ppo_minibatch"],
                         max_new_tokens=S["rollout_tokens"], gen_batch=S["gen_batch"], seed=S["seed"],
                         log_fn=rlhf.programmatic_reward_fn(b.tok), keep_samples=2 if name == "ppo_no_kl" else 0,
                         max_seconds=seconds)
    b.sync()
    b.save_adapter(policy, name, {"kl_coef": kl, "lr": lr, "steps": len(log), "reward": "reward model"})
    b.stage(name, {"train_seconds": round(time.time() - t, 1), "steps_done": len(log), "kl_coef": kl, "log": log},
            time.time() - t)


def stage_ppo(b: Bench) -> None:
    S = b.S
    _ppo(b, "ppo", S["ppo_kl"], S["ppo_lr"], S["ppo_steps"], S["ppo_prompts"], S["ppo_seconds"])


def stage_hack(b: Bench) -> None:
    S = b.S
    _ppo(b, "ppo_no_kl", 0.0, S["hack_lr"], S["hack_steps"], S["hack_prompts"], S["hack_seconds"])


def stage_grpo(b: Bench) -> None:
    from storylib import rlhf

    S = b.S
    policy, ref = b.policy(), rlhf.frozen(b.sft)
    b.sync()
    t = time.time()
    log = rlhf.train_grpo(policy, ref, rlhf.programmatic_reward_fn(b.tok), b.rl_train_tasks(), b.tok, S["grpo_steps"],
                          n_prompts=S["grpo_prompts"], group_size=S["grpo_group"], kl_coef=S["grpo_kl"],
                          lr=S["grpo_lr"], epochs=S["grpo_epochs"], minibatch=S["grpo_minibatch"],
                          max_new_tokens=S["rollout_tokens"], gen_batch=S["gen_batch"], seed=S["seed"],
                          max_seconds=S["grpo_seconds"])
    b.sync()
    b.save_adapter(policy, "grpo", {"kl_coef": S["grpo_kl"], "steps": len(log), "reward": "programmatic"})
    b.stage("grpo", {"train_seconds": round(time.time() - t, 1), "steps_done": len(log), "log": log},
            time.time() - t)


def stage_eval(b: Bench) -> None:
    from storylib import rlhf
    from storylib.sft import load_chat_model

    S, t = b.S, time.time()
    tasks, plain = b.tasks("heldout"), b.plain_stories()
    ref = rlhf.frozen(b.sft)
    table, records = {}, {}
    for name in ("sft", *(m for m in METHODS if m in b.eval_methods)):
        folder = b.out / "adapters" / name
        if name != "sft" and not folder.is_dir():
            print(f"eval: no {folder}, skipped", flush=True)
            continue
        model = b.sft if name == "sft" else load_chat_model(folder, device=b.device)[0]
        t1 = time.time()
        ev = rlhf.evaluate_policy(model, b.tok, tasks, ref, plain_stories=plain, seed=S["seed"],
                                  batch_size=S["eval_batch"], max_new_tokens=S["max_new_tokens"])
        records[name] = ev.pop("records")
        stage = b.results["stages"].get(name, {})
        ev["gpu_minutes"] = round(stage.get("train_seconds", 0.0) / 60, 2)
        ev["eval_seconds"] = round(time.time() - t1, 1)
        ev["run_date"] = b.results["date"]
        table[name] = ev
        print(f"eval {name}: reward {ev['reward']:.3f} kl/reply {ev['kl_reply']:.2f} plain bpb {ev['plain_bpb']:.4f}"
              f" ({ev['eval_seconds']} s)", flush=True)
    base = table["sft"]
    for ev in table.values():  # this call's rows
        ev["reward_gain_rel"] = ev["reward"] / base["reward"] - 1
        ev["gap_closed"] = (ev["reward"] - base["reward"]) / max(1e-9, 1 - base["reward"])
        ev["bpb_drift"] = ev["plain_bpb"] - base["plain_bpb"]
        ev["within_budget"] = ev["kl_reply"] <= S["kl_budget"] and ev["bpb_drift"] <= S["bpb_drift"]
        ev["goal_met"] = ev["within_budget"] and (ev["reward_gain_rel"] >= 0.20 or ev["gap_closed"] >= 0.5)
    kept = {n: ev for n, ev in b.results.get("table", {}).items() if n in METHODS and n not in table}
    for n, ev in kept.items():  # methods not evaluated in this call: their rows from the earlier run, as they were
        print(f"eval: {n}'s row kept from the run of {ev.get('run_date', '?')[:10]}")
    table = {n: table.get(n) or kept[n] for n in ("sft", *METHODS) if n in table or n in kept}
    candidates = [n for n in table if n in SHIPPABLE and table[n]["within_budget"]
                  and table[n]["reward"] > base["reward"]]
    best_any = max(candidates, key=lambda n: table[n]["reward"], default=None)
    best = max((n for n in candidates if n in records), key=lambda n: table[n]["reward"], default=None)
    if best_any != best:
        print(f"eval: the best row, {best_any}, is from an earlier run (its adapter is not in {b.out}); "
              f"the best of this run is {best}")
    if best:
        shutil.rmtree(b.out / "storyteller-rl", ignore_errors=True)
        shutil.copytree(b.out / "adapters" / best, b.out / "storyteller-rl")
    n_samples = min(4, len(tasks))
    samples = [{"request": tasks[i]["messages"][-1]["content"], "spec": tasks[i]["spec"],
                **{name: {"reply": records[name][i]["reply"], "reward": records[name][i]["reward"]}
                   for name in records}} for i in range(n_samples)]
    (b.out / "rl_records.json").write_text(json.dumps(records))
    b.results["table"], b.results["best"], b.results["samples"] = table, best, samples
    b.results["best_any_run"] = best_any
    b.results["goal"] = {"reward_gain_rel": 0.20, "or_gap_closed": 0.5, "kl_budget_nats_per_reply": S["kl_budget"],
                         "bpb_drift": S["bpb_drift"]}
    cols = ("reward", "ok_rate", "kl_reply", "kl_token", "plain_bpb", "bpb_drift", "gpu_minutes")
    print(f"{'method':<10}" + "".join(f"{c:>12}" for c in cols))
    for name, ev in table.items():
        print(f"{name:<10}" + "".join(f"{ev[c]:>12.4f}" for c in cols))
    print(f"best: {best}" + (f" → {b.out / 'storyteller-rl'}" if best else " (none beats SFT within the budget)"))
    b.stage("eval", {"best": best, "n_heldout_tasks": len(tasks), "n_plain_stories": len(plain)}, time.time() - t)


# ----------------------------------------------------------------------------- the shipped model's card

LABELS = {"sft": "SFT (models/storyteller-chat)", "dpo": "DPO", "idpo": "iterative DPO (on-policy rounds)",
          "ppo": "PPO on the reward model",
          "grpo": "GRPO on the rules", "ppo_no_kl": "PPO on the reward model, no KL (not shipped)"}
METHOD_TEXT = {
    "grpo": "trained by **GRPO** (`storylib.rlhf.train_grpo`) on the programmatic reward of "
            "`storylib.preferences.reward` (Chapter 14's rules as one number in [0, 1])",
    "ppo": "trained by **PPO** (`storylib.rlhf.train_ppo`) on Chapter 15's learned reward model, with a KL leash",
    "dpo": "trained by **DPO** (`storylib.rlhf.train_dpo`) on preference pairs ranked by the programmatic reward",
    "idpo": "trained by **iterative DPO** (`storylib.rlhf.train_iterative_dpo`): DPO on the chat model's own replies, "
            "then rounds of DPO on the policy's own fresh replies, ranked by the programmatic reward",
}

FILES = ("`adapter.safetensors`, `adapter_config.json` (rank, α, layers, `base_model` = `models/storyteller-chat`), "
         "`SHA256SUMS` (checked on every load)")
LOAD = ("`storylib.sft.load_chat_model(\"models/storyteller-rl\")`: the chat model (its adapter merged), then this "
        "adapter, merged (safetensors only)")


def model_card(results: dict) -> str:
    """MODEL_CARD.md of the shipped RL adapter (results["best"]), every number from the results file."""
    best, table, S = results["best"], results["table"], results["settings"]
    stage = results["stages"][best]
    if best == "grpo":
        how = (f"GRPO ran {stage['steps_done']} steps of {S['grpo_prompts']} training requests × {S['grpo_group']} "
               f"replies (temperature 1, up to {S['rollout_tokens']} tokens), KL coefficient {S['grpo_kl']} ($k_3$ in "
               f"the loss), lr {S['grpo_lr']}, {stage['train_seconds']:.0f} s.")
    elif best == "ppo":
        how = (f"PPO ran {stage['steps_done']} steps of {S['ppo_prompts']} training requests (temperature 1, up to "
               f"{S['rollout_tokens']} tokens), KL coefficient {S['ppo_kl']} ($k_1$ in the reward), lr {S['ppo_lr']}, "
               f"{stage['train_seconds']:.0f} s.")
    elif best == "idpo":
        pr = results["stages"]["prefs"]["train"]
        rounds = [r for r in stage["rounds"] if isinstance(r["round"], int) and "pairs" in r]
        n_pairs = ", ".join(f"{r['pairs']:,}" for r in rounds)
        how = (f"First DPO as the DPO row ({S['dpo_steps']} steps of {S['dpo_batch']} pairs, β = {S['dpo_beta']}, on "
               f"{pr['pairs']:,} pairs of the chat model's replies), then {len(rounds)} on-policy rounds: each "
               f"sampled {S['idpo_k']} replies from the current policy to each of {S['idpo_prompts']:,} fresh "
               f"training requests, ranked them by the programmatic reward, paired replies at least "
               f"{S['idpo_min_gap']} apart ({n_pairs} pairs), "
               f"and ran {S['idpo_steps']} more DPO steps (β = {S['idpo_beta']}, lr {S['idpo_lr']}) against the same "
               f"reference, the chat model; {stage['train_seconds']:.0f} s with the sampling.")
    else:
        pr = results["stages"]["prefs"]["train"]
        how = (f"DPO ran {S['dpo_steps']} steps of {S['dpo_batch']} pairs, β = {S['dpo_beta']}, lr {S['dpo_lr']}, "
               f"{stage['train_seconds']:.0f} s, on {pr['pairs']:,} preference pairs: {S['k']} replies of the SFT "
               f"model to each of {pr['tasks']:,} training requests, every two at least {S['min_gap']} apart in "
               f"programmatic reward.")
    rows = ["| method | mean reward | vs SFT | all rules met | KL / reply | plain bits/byte (drift) | GPU min |",
            "|---|---|---|---|---|---|---|"]
    for name, ev in table.items():
        label = f"**{LABELS[name]} (this model)**" if name == best else LABELS[name]
        if ev.get("run_date", "")[:16] != table[best].get("run_date", "")[:16]:  # kept from an earlier run (--keep)
            label += f" (run of {ev['run_date'][:16].replace('T', ' ')} UTC)"
        rows.append(f"| {label} | {ev['reward']:.3f} | {100 * ev['reward_gain_rel']:+.1f}% | {ev['ok_rate']:.3f} | "
                    f"{ev['kl_reply']:.2f} | {ev['plain_bpb']:.4f} ({ev['bpb_drift']:+.4f}) | "
                    f"{ev['gpu_minutes']:.2f} |")
    rules = ["| rule (pass rate) | SFT | this model |", "|---|---|---|"]
    rules += [f"| {k} | {v:.3f} | {table[best]['rules'][k]:.3f} |" for k, v in table["sft"]["rules"].items()
              if v is not None and table[best]["rules"].get(k) is not None]
    ev, base = table[best], table["sft"]
    worse = [f"{k} {base['rules'][k]:.3f} → {ev['rules'][k]:.3f}" for k in base["rules"]
             if k != "repeated_ngram_rate" and None not in (base["rules"][k], ev["rules"].get(k))
             and ev["rules"][k] < base["rules"][k] - 0.02]
    met = "meets" if ev["goal_met"] else "does not meet"
    worse_text = f" Some rules got worse: {', '.join(worse)}." if worse else ""
    lora = results["settings"]
    calls = ", ".join(f"`{','.join(c['stages'])}`" for c in results.get("calls", []))
    return f"""# The chat storyteller after RL ({best.upper()}) — model card

Chapter 15's chat storyteller: Chapter 14's chat model (`models/storyteller-chat`, itself a LoRA adapter on
`models/storyteller`) with a second **LoRA adapter of rank {lora['lora_r']}** (α = {lora['lora_alpha']}, every `c_attn`,
`c_proj`, `c_fc` of the blocks) {METHOD_TEXT[best]}. It is the course's default chat model
(`storylib.sft.default_chat_folder`): the chat widget, `llm101n chat`, the web app and the API run it.

| | |
|---|---|
| files | {FILES} |
| load | {LOAD} |
| licence | **CDLA-Sharing-1.0** (derived from TinyStories). Code: MIT |

## How it was trained

`python bench/rl.py` on one {results['card']} ({stage.get('run_date', results['date'])[:10]}, torch
{results['torch']}), in calls of `--stages` {calls} (the card: `python bench/rl.py --card DIR`). {how}
The training requests are turns of conversations made by Chapter 14's rules from training stories.

## Evaluation

`storylib.rlhf.evaluate_policy` on {ev['n']} held-out requests (conversations made by the same rules from the first
{S['n_heldout']} **validation** stories; no training step saw them), one reply each, sampled as users get them
(`storylib.sft.CHAT_SAMPLING`). KL per reply: $k_3$ to the SFT model on the policy's own replies, in nats. Bits per
byte on {S['n_plain']} plain validation stories. Everything: `bench/results/rl_h100.json`.

{chr(10).join(rows)}

{chr(10).join(rules)}

## Limitations — read this first

This model {met} the course's goal for the run (+20% mean reward over SFT, or half the gap to a perfect reward,
within {S['kl_budget']:.0f} nats of KL per reply and {S['bpb_drift']} bits/byte of drift):
{100 * ev['reward_gain_rel']:+.1f}% and {100 * ev['gap_closed']:.0f}% of the gap.{worse_text}
Its English is TinyStories', it repeats itself and loses track of who is who, like the models it starts from. Not for
any use beyond learning.
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {','.join(STAGES)}")
    p.add_argument("--data", default=os.environ.get("STORYLIB_DATA") or str(ROOT / "shared" / "data" / "tinystories"),
                   help="the TinyStories folder (default: $STORYLIB_DATA, else shared/data/tinystories)")
    p.add_argument("--chat", default="models/storyteller-chat", help="the SFT chat model (Chapter 14's)")
    p.add_argument("--out", default=os.environ.get("OUT") or "_build/rl")
    p.add_argument("--card", metavar="DIR", help="only write DIR/MODEL_CARD.md from bench/results/rl_h100.json")
    p.add_argument("--eval-methods", default=None,
                   help=f"comma-separated methods the eval stage evaluates (SFT always; default: {','.join(METHODS)})")
    p.add_argument("--keep", metavar="FILE", default=None,
                   help="an earlier rl_h100.json (e.g. bench/results/rl_h100.json) whose stages and table rows this "
                        "run keeps where it does not redo them (each marked with its run_date); used when $OUT has "
                        "no rl_h100.json yet")
    args = p.parse_args(argv)
    if args.card:
        results = json.loads((ROOT / "bench" / "results" / "rl_h100.json").read_text())
        (Path(args.card) / "MODEL_CARD.md").write_text(model_card(results))
        return 0
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        sys.exit(f"bench/rl.py: unknown stages {bad}; choose from {STAGES}")
    if not Path(args.data).is_dir():
        alt = ROOT.parent / "shared" / "data" / "tinystories"
        if not alt.is_dir():
            sys.exit(f"bench/rl.py: no data folder {args.data} (give --data)")
        args.data = str(alt)
    t0 = time.time()
    b = Bench(args)
    print(f"bench/rl.py: stages {stages}, scale {b.S['scale']}, device {b.device}, out {b.out}", flush=True)
    for s in (s for s in STAGES if s in stages):  # always in the pipeline's order
        print(f"== stage {s} [{time.time() - t0:.0f} s]", flush=True)
        globals()[f"stage_{s}"](b)
    b.results.setdefault("calls", []).append({"stages": stages, "wall_seconds": round(time.time() - t0, 1),
                                              "run_date": b.results["date"]})
    b.save()
    print(f"bench/rl.py: done in {time.time() - t0:.0f} s; results in {b.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
