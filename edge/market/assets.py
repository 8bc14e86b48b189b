"""A registry asset (``[[assets]]``) as the planner sees it: a battery's model with its
state of charge now, read from its telemetry (percent of capacity or kWh), clamped to the
window the planner may use."""

from __future__ import annotations

from edge.codecs.registry import Asset
from edge.market.battery import Battery


class AssetError(ValueError):
    """An asset that cannot be planned (not a battery, no state of charge known)."""


def soc_kwh(asset: Asset, reported: float) -> float:
    """The telemetry's state of charge in kWh, within [soc_min_kwh, soc_max_kwh]."""
    kwh = reported / 100 * asset.capacity_kwh if asset.soc_unit == "%" else reported
    return min(max(kwh, asset.soc_min_kwh), asset.soc_max_kwh)


def battery(asset: Asset, soc: float) -> Battery:
    """The planner's battery for ``asset`` holding ``soc`` kWh now."""
    if asset.kind != "battery":
        raise AssetError(f"asset {asset.id!r} is a {asset.kind}, not a battery")
    made = Battery(capacity_kwh=asset.capacity_kwh, charge_kw=asset.charge_kw, discharge_kw=asset.discharge_kw,
                   efficiency=asset.efficiency, soc_kwh=min(max(soc, asset.soc_min_kwh), asset.soc_max_kwh),
                   soc_min_kwh=asset.soc_min_kwh, soc_max_kwh=asset.soc_max_kwh,
                   cost_eur_per_mwh=asset.cost_eur_per_mwh)
    problems = made.problems()
    if problems:
        raise AssetError(f"asset {asset.id!r}: {'; '.join(problems)}")
    return made
