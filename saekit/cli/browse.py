"""`saekit browse`: a local web app to explore one SAE's latents."""

from __future__ import annotations

import ipaddress
import sys

from saekit.cli.common import context_length, path_arg, port_number, positive_int, thread_count


def add_parser(sub) -> None:
    p = sub.add_parser(
        "browse",
        help="explore an SAE's latents in a local web app (top contexts, logit lens, live text)",
        description="Serve a feature browser for one SAE at http://127.0.0.1:PORT/. The first run "
        "(or --build) precomputes every latent's page from a corpus sample into DATA_DIR "
        "(default <sae_dir>/browser); serving then needs no recomputation.",
    )
    p.add_argument("sae_dir", type=path_arg)
    p.add_argument("--build", action="store_true", help="(re)build the data directory first")
    p.add_argument("--no-serve", action="store_true", help="build only, do not start the server")
    p.add_argument(
        "--data-dir", type=path_arg, help="browser data directory (default <sae_dir>/browser)"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, local only)"
    )
    p.add_argument(
        "--port", type=port_number, default=8765, help="port (default 8765; 0 = any free port)"
    )
    p.add_argument("--model", help="model name or path (default: the one the SAE was trained on)")
    p.add_argument("--hookpoint", help="hookpoint (default: the SAE's)")
    p.add_argument(
        "--corpus",
        default="default",
        help="text sample: 'default' (sae-probes text), a .txt/.jsonl/.parquet path or hf:NAME",
    )
    p.add_argument(
        "--split",
        default="heldout",
        choices=["heldout", "train", "all"],
        help="corpus split to sample (default: held-out documents)",
    )
    p.add_argument(
        "--contexts", type=positive_int, default=256, help="contexts to encode (default 256)"
    )
    p.add_argument(
        "--ctx-len", type=context_length, default=64, help="tokens per context (default 64)"
    )
    p.add_argument("--threads", type=thread_count)
    p.add_argument("--verbose", action="store_true", help="log every request")


def run(args) -> int:
    from saekit.cli.common import UsageError, set_threads
    from saekit.evaluation.evaluate import ModelSource, model_source
    from saekit.formats.native import load
    from saekit.viewer.build import BuildSettings, build
    from saekit.viewer.server import make_server

    set_threads(args.threads)
    data_dir = args.data_dir or args.sae_dir / "browser"
    if args.build or not (data_dir / "meta.json").is_file():
        sae = load(args.sae_dir)
        source = model_source(sae)
        if args.model or args.hookpoint:
            if source is None and not (args.model and args.hookpoint):
                raise UsageError(
                    "no model recorded for this SAE: pass both --model and --hookpoint"
                )
            source = ModelSource(
                args.model or source.model,
                args.hookpoint or source.hookpoint,
                source.which if source else "output",
            )
        if source is None:
            raise UsageError(
                f"{args.sae_dir}: not trained on model activations; pass --model and --hookpoint"
            )
        settings = BuildSettings(
            corpus=args.corpus, split=args.split, n_contexts=args.contexts, ctx_len=args.ctx_len
        )
        print(f"saekit browse: building {data_dir} ({source.model} @ {source.hookpoint})")
        build(
            sae,
            source,
            data_dir,
            settings,
            sae_path=args.sae_dir,
            progress=lambda m: print(f"  {m}", file=sys.stderr),
        )
    if args.no_serve:
        return 0
    if not _is_loopback(args.host):
        print(
            f"warning: serving on {args.host}: anyone who can reach this address can use the "
            "browser and run the model",
            file=sys.stderr,
        )
    server = make_server(data_dir, args.host, args.port, sae_dir=args.sae_dir, verbose=args.verbose)
    print(f"saekit browse: serving {server.url}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
