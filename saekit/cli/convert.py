"""`saekit convert`: SAE files from/to SAELens, sparsify and dictionary_learning."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert SAE files between saekit, SAELens, sparsify and dictionary_learning",
        description="Read the SAE(s) at SRC (format detected from its files: saekit, SAELens, "
        "sparsify folder or run folder, dictionary_learning ae.pt) and write them to DST in "
        "--to format. The result reconstructs exactly as the source does; an architecture "
        "the target cannot represent is an error.",
    )
    p.add_argument("src", type=Path, metavar="SRC")
    p.add_argument("dst", type=Path, metavar="DST")
    p.add_argument("--to", required=True, choices=["saekit", "saelens", "sparsify"])
    p.add_argument(
        "--hookpoint",
        help="where the SAE reads the model: a module path (model.layers.6) or a "
        "TransformerLens name (blocks.6.hook_resid_post); default: what SRC records",
    )
    p.add_argument("--model", help="model name to record (SAELens metadata.model_name)")
    p.add_argument(
        "--layout",
        default="llama",
        choices=["llama", "gpt2"],
        help="module naming used to map TransformerLens hook names (default llama: "
        "model.layers.L; gpt2: transformer.h.L)",
    )
    p.add_argument(
        "--dict-class",
        help="dictionary_learning class when SRC has no config.json to say (AutoEncoderTopK "
        "or BatchTopKSAE share their tensors)",
    )


def run(args) -> int:
    from saekit.interop import convert, detect_format

    fmt = detect_format(args.src)
    written = convert(
        args.src,
        args.dst,
        args.to,
        dict_class=args.dict_class,
        layout=args.layout,
        hookpoint=args.hookpoint,
        model_name=args.model,
    )
    for path in written:
        print(f"{args.src} ({fmt}) -> {path} ({args.to})")
    return 0
