"""CPU cost of checking object shapes (kube/shapes.py) on the reflector's decode path.

Decodes the same list pages of synthetic pods (and their watch events) two ways, in rounds
whose order is reversed each time: as the model type directly (what the reflector did before shapes were checked) and as
the kind-carrying checked type, refused or handed on as the model type (what it does now).
Prints the median microseconds per object of each. Pure CPU, no I/O.

python bench/shapes.py [--pods 20000 --rounds 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import msgspec

from metacollector.emulator.synthetic import generate_cluster
from metacollector.kube.reflector import _page_type
from metacollector.kube.resources import RESOURCES
from metacollector.kube.shapes import accepted_kinds, checked_type, plain, refusal
from metacollector.model import Pod, intern_strings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    pods = [o for p, o in generate_cluster(max(1, args.pods // 30), 30, seed=1) if p == "pods"]
    page = json.dumps({"metadata": {"resourceVersion": "9"}, "items": pods}).encode()
    lines = [json.dumps(p).encode() for p in pods]
    resource = next(r for r in RESOURCES if r.kind == "Pod")
    kinds = accepted_kinds(resource)
    checked = checked_type(Pod)
    old_page, new_page = (msgspec.json.Decoder(_page_type(t)) for t in (Pod, checked))
    old_item, new_item = msgspec.json.Decoder(Pod), msgspec.json.Decoder(checked)

    def old_list() -> None:
        for item in old_page.decode(page).items:
            intern_strings(item)

    def new_list() -> None:
        for item in new_page.decode(page).items:
            if refusal(resource, kinds, item.kind, item) is None:
                intern_strings(plain(Pod, item))

    def old_events() -> None:
        for line in lines:
            intern_strings(old_item.decode(line))

    def new_events() -> None:
        for line in lines:
            item = new_item.decode(line)
            if refusal(resource, kinds, item.kind, item) is None:
                intern_strings(plain(Pod, item))

    cases = {"list, before": old_list, "list, checked": new_list}
    cases |= {"watch, before": old_events, "watch, checked": new_events}
    times: dict[str, list[float]] = {name: [] for name in cases}
    order = list(cases.items())
    for _ in range(args.rounds):
        order.reverse()  # whichever runs first in a round pays for the garbage of the last
        for name, run in order:
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) / len(pods) * 1e6)
    print(f"{len(pods)} pods, {args.rounds} alternating rounds, median us per object")
    print(f"{'path':<16} {'us/object':>10}")
    for name, samples in times.items():
        print(f"{name:<16} {statistics.median(samples):>10.2f}")


if __name__ == "__main__":
    main()
