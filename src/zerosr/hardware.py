"""`python -m zerosr.hardware [--json] [--arch NAME]`: what zerosr detects and would choose here."""

from __future__ import annotations

import argparse
import json

from zerosr.cli import exit_on_user_error
from zerosr.detect import Hardware, generation, probe, tier_for


class HardwareDetector:
    """The hardware API: the probe, the tier and the recommendations derived from them."""

    def __init__(self, arch: str | None = None):
        """`arch`: a built-in arch option (`conf/arch/<arch>.yaml`); None: train.py's default."""
        from zerosr.archs.spec import CUSTOM, variant
        from zerosr.errors import UserError

        if arch == CUSTOM:
            raise UserError("--arch custom: the recommendations are for a built-in option; a custom network's batch "
                            "is searched when it trains")
        if arch is not None:
            variant(arch)  # an unknown name is one line listing the known ones
        self.hardware: Hardware = probe()
        self.arch = arch

    @property
    def tier(self) -> str:
        return tier_for(self.hardware)

    def recommendations(self) -> dict:
        """The values `train.py arch=<arch>` would use on this machine (composed, then resolved)."""
        from zerosr.config.compose import compose_config

        cfg = compose_config([f"arch={self.arch}"] if self.arch else [])
        tier = cfg.hardware_tier
        return {"arch": cfg.arch.name, "batch_size": cfg.train.batch_size, "lq_size": cfg.train.lq_size,
                "precision": tier.precision, "compile": tier.compile,
                "channels_last": tier.channels_last, "num_workers": tier.num_workers}

    def to_dict(self) -> dict:
        hw = self.hardware
        return {"tier": self.tier, "gpus": hw.to_dict()["gpus"], "gpu_count": len(hw.gpus),
                "generation": generation(hw.compute_capability), "cpu_cores": hw.cpu_logical_cores,
                "cpu_physical_cores": hw.cpu_physical_cores, "ram_gb": hw.ram_gb,
                "ram_available_gb": hw.ram_available_gb, "source": hw.source,
                **self.recommendations()}

    def generate_hardware_report(self) -> str:
        d = self.to_dict()
        lines = ["=== zerosr hardware report ===", "GPU:"]
        if not d["gpus"]:
            lines.append("  none (no CUDA GPU detected)")
        for index, gpu in enumerate(d["gpus"]):
            major, minor = gpu["compute_capability"]
            lines.append(f"  GPU {index}: {gpu['name']}, {gpu['vram_gb']:.1f} GB VRAM "
                         f"({gpu['free_vram_gb']:.1f} GB free), compute {major}.{minor}, driver {gpu['driver']}")
        lines += [
            f"  architecture generation: {d['generation']}",
            f"CPU: {d['cpu_physical_cores']} physical / {d['cpu_cores']} logical cores",
            f"RAM: {d['ram_gb']:.1f} GB ({d['ram_available_gb']:.1f} GB available)",
            f"Hardware tier: {d['tier']}",
            f"Recommended for {d['arch']}:",
            f"  batch size: {d['batch_size']} ({d['lq_size']}px LR patches; refined by the batch automation)",
            f"  precision: {d['precision']}",
            f"  torch.compile: {'yes' if d['compile'] else 'no'}",
            f"  channels_last: {'yes' if d['channels_last'] else 'no'}",
            f"  data-loader workers: {d['num_workers']}",
        ]
        if d["source"] != "probe":
            lines.append(f"(hardware described by {d['source']}, not probed)")
        return "\n".join(lines)


def print_hardware_report(arch: str | None = None) -> None:
    print(HardwareDetector(arch).generate_hardware_report())


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zerosr.hardware", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--arch", default=None, help="arch option for the recommendations (default: train.py's)")
    args = parser.parse_args(argv)
    detector = HardwareDetector(args.arch)
    print(json.dumps(detector.to_dict(), indent=2) if args.json else detector.generate_hardware_report())


if __name__ == "__main__":
    main()
