"""Runs :class:`tunnel.netwatch.NetWatch` inside a namespace and prints what it sees.

``ip netns exec NS python netwatch_agent.py --peer ADDRESS --local ADDRESS``: one JSON line
``{"ready": ...}`` with the first view, then one line per change with the verdict for a
link from ``--local`` to ``--peer`` (as the tunnel would judge it). Runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any

from tunnel.netview import NetChange, NetView, judge
from tunnel.netwatch import TICK_S, NetWatch


def _view(view: NetView) -> dict[str, Any]:
    return {
        "addresses": sorted(f"{name}={address}" for name, address in view.addresses or ()),
        "default": view.default_v4.interface if view.default_v4 else None,
        "peer_route": view.peer_route.interface if view.peer_route else None,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer")
    parser.add_argument("--local")
    parser.add_argument("--poll", action="store_true", help="the portable poll, not netlink")
    parser.add_argument("--tick", type=float, default=TICK_S, help="seconds between ticks")
    args = parser.parse_args()

    def report(change: NetChange) -> None:
        verdict = judge(change, link_up=True, local=args.local)
        print(
            json.dumps(
                {
                    "action": verdict.action.value,
                    "reason": verdict.reason,
                    "resume": str(change.resume) if change.resume else None,
                    **_view(change.after),
                }
            ),
            flush=True,
        )

    watch = NetWatch(report, use_netlink=not args.poll, tick_s=args.tick)
    await watch.start()
    watch.follow(args.peer)
    print(json.dumps({"ready": watch.mode, **_view(watch.view)}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    watch.close()


if __name__ == "__main__":
    asyncio.run(main())
