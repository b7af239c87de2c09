"""The sweep's cost ledger: device-hours per run, and what they cost at the config's prices.

A device is a GPU (or, on a cluster without GPUs, a training worker). A run's device-hours are
its wall time on the cluster, from launch to end, times the devices it holds (its workers are
gang-scheduled: they hold them together), added up over every submission that trained it. The
price of a device-hour is the node's price over its devices (``cluster.cost``):

    cost: {node_type: g6.12xlarge, devices_per_node: 4, on_demand_per_hour: 4.60,
           spot_per_hour: 1.86, market: spot}
"""

from __future__ import annotations

COST_KEYS = ("node_type", "devices_per_node", "on_demand_per_hour", "spot_per_hour", "market")
MARKETS = ("on_demand", "spot")


def check_cost(cost: dict) -> None:
    unknown = sorted(set(cost) - set(COST_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; valid: {', '.join(COST_KEYS)}")
    devices = cost.get("devices_per_node", 1)
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        raise ValueError(f"devices_per_node must be a positive integer, got {devices!r}")
    market = cost.get("market", "on_demand")
    if market not in MARKETS:
        raise ValueError(f"market must be one of {', '.join(MARKETS)}, got {market!r}")
    key = f"{market}_per_hour"
    price = cost.get(key)
    if not isinstance(price, (int, float)) or isinstance(price, bool) or price < 0:
        raise ValueError(f"{key} must be a price per node-hour (>= 0) for market {market!r}, "
                         f"got {price!r}")


def price_per_device_hour(cost: dict) -> float | None:
    """The configured price of one device for one hour, or None without prices."""
    if not cost:
        return None
    market = cost.get("market", "on_demand")
    return float(cost[f"{market}_per_hour"]) / cost.get("devices_per_node", 1)


def run_charge(seconds: float, devices: float, cost: dict) -> dict[str, float]:
    """The ledger's metrics for one stretch of a run on the cluster."""
    hours = seconds / 3600 * devices
    out = {"cost/device_hours": hours}
    price = price_per_device_hour(cost)
    if price is not None:
        out["cost/usd"] = hours * price
    return out


def time_to_target(history: list[tuple[int, float]], target: float, total_steps: int,
                   device_hours: float) -> float | None:
    """Device-hours until the validation error first reached ``target`` (the run's hours
    prorated by steps, the steps taking equal time), or None if it never did."""
    for step, value in history:
        if value <= target:
            return device_hours * step / max(total_steps, 1)
    return None
