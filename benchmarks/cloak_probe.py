"""The personal cloak on unseen photos, with every optimiser setting exposed: the
protocol of :mod:`livedeid.cloak.protocol` (also ``livedeid eval --cloak``).

    python benchmarks/cloak_probe.py [--steps N] [--recipe NAME] [--loo] [--codec 1500,600] [--set FIELD=VALUE]

Writes ``benchmarks/results/cloak_probe/<recipe>.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from livedeid.cloak.protocol import add_protocol_options, parse_kbps, run_protocol, write_result  # noqa: E402
from livedeid.io.profile import DEFAULT_BUDGET  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_protocol_options(ap, ROOT.parent / "shared" / "data" / "faces" / "celebrities")
    ap.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the optimiser's)")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET * 255,
                    help=f"L-inf budget in 8-bit levels (default: enrolment's, {DEFAULT_BUDGET * 255:.0f})")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--margin", type=float, default=None)
    ap.add_argument("--ssim-weight", type=float, default=None)
    ap.add_argument("--own-weight", type=float, default=None)
    ap.add_argument("--jpeg-share", type=float, default=None)
    ap.add_argument("--check-every", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recognizers", default="dlib,sface", help="the ensemble the cloak is optimised against")
    ap.add_argument("--judges", default="dlib,sface,faceres",
                    help="the recognisers that verify it (one outside the ensemble measures transfer)")
    ap.add_argument("--grow", type=float, default=None, help="the cloak's region: the face oval scaled by 1 + this")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="any other CloakSettings field (JSON value), e.g. --set pulse_weight=1.0")
    ap.add_argument("--eot", action="append", default=[], metavar="FIELD=VALUE",
                    help="any EotSettings field (JSON value), e.g. --eot pose=0.05")
    ap.add_argument("--loo", action="store_true", help="also leave-one-out transfer (each ensemble member left out in turn)")
    ap.add_argument("--codec", type=parse_kbps, default=None, metavar="KBPS[,KBPS...]",
                    help="also verify after a 720p H.264 call at these bitrates (kbit/s), e.g. 1500,600")
    ap.add_argument("--codec-frames", type=int, default=15,
                    help="length of the H.264 clip; its last frame is judged (longer = nearer steady state)")
    ap.add_argument("--oracle-population", action="store_true",
                    help="with --set specific_weight=W: the person-specific term's population is the other "
                         "identities' enrolment halves (also the top-1 gallery: an optimistic bound)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cloak_probe"))
    args = ap.parse_args(argv)

    from livedeid.cloak.optimise import CloakSettings

    s = CloakSettings(budget=args.budget / 255.0, threads=args.threads,
                      recognizers=tuple(n for n in args.recognizers.split(",") if n))
    if args.steps is not None:
        s.steps = args.steps
    judges = [n for n in args.judges.split(",") if n]
    for item in args.set:
        key, _, value = item.partition("=")
        if not hasattr(s, key):
            ap.error(f"--set: CloakSettings has no field {key!r}")
        setattr(s, key, json.loads(value))
    for item in args.eot:
        key, _, value = item.partition("=")
        if not hasattr(s.eot, key):
            ap.error(f"--eot: EotSettings has no field {key!r}")
        value = json.loads(value)
        setattr(s.eot, key, tuple(value) if isinstance(value, list) else value)
    if args.grow is not None:
        s.grow = args.grow
    for field, value in (("lr", args.lr), ("batch", args.batch), ("margin", args.margin),
                         ("ssim_weight", args.ssim_weight), ("check_every", args.check_every),
                         ("own_weight", args.own_weight)):
        if value is not None:
            setattr(s, field, value)
    if args.jpeg_share is not None:
        s.eot.jpeg_share = args.jpeg_share
    if args.oracle_population != (s.specific_weight > 0):
        ap.error("--oracle-population and --set specific_weight=W (W > 0) go together")
    result = run_protocol(Path(args.faces), s, judges, min_photos=args.min_photos, people=args.people,
                          only=args.only, loo=args.loo, oracle_population=args.oracle_population,
                          codec=args.codec, codec_frames=args.codec_frames, say=lambda t: print(t, flush=True))
    result = {"recipe": args.recipe, "command": "python benchmarks/cloak_probe.py " + " ".join(argv or sys.argv[1:]),
              **result}
    print(write_result(result, Path(args.out), args.recipe).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
