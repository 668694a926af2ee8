"""Run the local DeltaDeFi exchange (adapters/deltadefi/exchange.py) from the command line.

    python scripts/fake_exchange.py --port 8765 --frames 5000 --drop-every 200 --lose-on-drop 10
    ledger run --ws-url ws://127.0.0.1:8765 --rest-url http://127.0.0.1:8765

The API key it accepts is --api-key, else $FAKE_EXCHANGE_API_KEY, else $DELTADEFI_API_KEY.
It prints one line with its URLs, streams the session when the first client
connects, and runs until SIGINT/SIGTERM (or, with --exit-after, that many
seconds after the session ends). --truth FILE then gets every fill id the
exchange executed and its final balances, as JSON; --record FILE every frame
it generated (the lossless session, for `ledger ingest`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from adapters.deltadefi.exchange import (
    CaptureSource,
    Faults,
    FrameSource,
    LocalExchange,
    SessionSource,
)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="A local DeltaDeFi exchange on 127.0.0.1.")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    p.add_argument("--api-key", default=None)
    p.add_argument("--frames", type=int, default=3000, help="frames in the generated session")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--rate", type=float, default=500.0, help="frames per second (0: as fast as possible)"
    )
    p.add_argument(
        "--capture", type=Path, help="replay this capture instead of a generated session"
    )
    p.add_argument("--malformed-rate", type=float, default=0.0)
    p.add_argument("--drop-every", type=int, default=0)
    p.add_argument("--lose-on-drop", type=int, default=0)
    p.add_argument("--repeat-rate", type=float, default=0.0)
    p.add_argument("--stall-connection", type=int, default=0)
    p.add_argument("--stall-after", type=int, default=0)
    p.add_argument("--rate-limit-every", type=int, default=0)
    p.add_argument("--rate-limit-burst", type=int, default=1)
    p.add_argument("--server-error-every", type=int, default=0)
    p.add_argument(
        "--exit-after", type=float, default=None, help="exit this long after the session ends"
    )
    p.add_argument(
        "--truth", type=Path, help="write the exchange's fills and balances here on exit"
    )
    p.add_argument("--record", type=Path, help="write every generated frame here on exit")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace, key: str) -> int:
    source: FrameSource = (
        CaptureSource(args.capture)
        if args.capture
        else SessionSource(args.frames, args.seed, malformed_rate=args.malformed_rate)
    )
    faults = Faults(
        drop_every=args.drop_every,
        lose_on_drop=args.lose_on_drop,
        repeat_rate=args.repeat_rate,
        stall_connection=args.stall_connection,
        stall_after=args.stall_after,
        rate_limit_every=args.rate_limit_every,
        rate_limit_burst=args.rate_limit_burst,
        server_error_every=args.server_error_every,
        seed=args.seed,
    )
    exchange = LocalExchange(
        source, key, rate=args.rate, faults=faults, port=args.port, keep_frames=bool(args.record)
    )
    await exchange.start()
    print(f"listening on {exchange.ws_url} (REST {exchange.rest_url})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.exit_after is not None:

        async def exit_later() -> None:
            await exchange.finished.wait()
            await asyncio.sleep(args.exit_after)
            stop.set()

        exiting = loop.create_task(exit_later())
    await stop.wait()
    if args.exit_after is not None:
        exiting.cancel()
    await exchange.stop()
    if args.truth:
        truth = exchange.truth()
        args.truth.write_text(
            json.dumps(
                {
                    "fills": sorted(truth["fills"]),
                    "balances": {
                        a: {k: format(v, "f") for k, v in b.items()}
                        for a, b in truth["balances"].items()
                    },
                    "stats": exchange.stats.as_json(),
                },
                indent=2,
            )
        )
    if args.record:
        with args.record.open("wb") as out:
            for raw in exchange.generated_frames:
                out.write((raw.encode() if isinstance(raw, str) else raw) + b"\n")
    print(json.dumps(exchange.stats.as_json()), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    key = (
        args.api_key
        or os.environ.get("FAKE_EXCHANGE_API_KEY")
        or os.environ.get("DELTADEFI_API_KEY")
    )
    if not key:
        print("error: give the key to accept: --api-key or $FAKE_EXCHANGE_API_KEY", file=sys.stderr)
        return 2
    return asyncio.run(_serve(args, key))


if __name__ == "__main__":
    sys.exit(main())
