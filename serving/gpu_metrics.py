"""GPU utilisation and memory per device, read through NVML at scrape time, for the gateway's `/metrics`.

Why here and not from TorchServe: TorchServe's own GPU gauges need the extra `nvgpu` package, are refreshed
only once a minute, and carry no memory total. NVML (`nvidia-ml-py`) is what `nvidia-smi` reads, costs a few
microseconds per call, and works wherever the NVIDIA driver is loaded.

CPU-only hosts (no driver, no GPU) degrade cleanly: `zoo_gateway_gpu_available` is 0, no per-device series
exist, and nothing is logged above INFO. A device that stops answering (GPU lost, a query not supported on
MIG slices) only loses that value; the other devices and values are still exported.

Series (label ``gpu`` is the NVML index, ``name`` the product name, ``uuid`` NVML's GPU UUID):
- ``zoo_gateway_gpu_available`` 1 when NVML answered and at least one device exists, else 0
- ``zoo_gateway_gpu_utilization_ratio`` share of the last sample period a kernel ran (0..1)
- ``zoo_gateway_gpu_memory_used_bytes`` / ``zoo_gateway_gpu_memory_total_bytes`` device memory
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

logger = logging.getLogger(__name__)

LABELS = ["gpu", "name", "uuid"]


def _load_nvml() -> Any | None:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


class GpuCollector:
    """A prometheus_client collector; NVML is initialised on the first scrape (never at import)."""

    def __init__(self, nvml: Any | None = None) -> None:
        self._nvml = nvml if nvml is not None else _load_nvml()
        self._lock = threading.Lock()
        self._initialised: bool | None = None  # None: not tried yet
        self.unavailable_reason = "" if self._nvml is not None else "nvidia-ml-py is not installed"

    def _init(self) -> bool:
        with self._lock:
            if self._initialised is None:
                if self._nvml is None:
                    self._initialised = False
                else:
                    try:
                        self._nvml.nvmlInit()
                        self._initialised = True
                    except Exception as exc:  # noqa: BLE001 - NVMLError_* and OSError: no driver here
                        self.unavailable_reason = f"NVML unavailable: {exc}"
                        self._initialised = False
                if not self._initialised:
                    logger.info("GPU metrics off (%s); zoo_gateway_gpu_available is 0", self.unavailable_reason)
            return self._initialised

    def describe(self) -> Iterable[Metric]:
        return []  # nothing is touched at registration; the names are fixed and unique to this collector

    def collect(self) -> Iterator[Metric]:
        available = GaugeMetricFamily("zoo_gateway_gpu_available",
                                      "1 when NVML reports at least one GPU on the gateway host, else 0")
        util = GaugeMetricFamily("zoo_gateway_gpu_utilization_ratio",
                                 "Share of the last NVML sample period a kernel was running (0..1)", labels=LABELS)
        used = GaugeMetricFamily("zoo_gateway_gpu_memory_used_bytes", "GPU memory in use", labels=LABELS)
        total = GaugeMetricFamily("zoo_gateway_gpu_memory_total_bytes", "GPU memory installed", labels=LABELS)
        devices = self._read() if self._init() else []
        available.add_metric([], 1.0 if devices else 0.0)
        for labels, values in devices:
            for family, key in ((util, "util"), (used, "used"), (total, "total")):
                if key in values:
                    family.add_metric(labels, values[key])
        yield available
        yield util
        yield used
        yield total

    def _read(self) -> list[tuple[list[str], dict[str, float]]]:
        nv = self._nvml
        try:
            count = nv.nvmlDeviceGetCount()
        except Exception as exc:  # noqa: BLE001 - driver gone since init: report no GPU, keep serving
            logger.warning("NVML device count failed: %s", exc)
            return []
        devices = []
        for index in range(count):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(index)
                labels = [str(index), _text(nv.nvmlDeviceGetName(handle)), _text(nv.nvmlDeviceGetUUID(handle))]
            except Exception as exc:  # noqa: BLE001 - one lost device must not hide the others
                logger.warning("NVML device %d unreadable: %s", index, exc)
                continue
            values: dict[str, float] = {}
            try:
                values["util"] = nv.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
            except Exception as exc:  # noqa: BLE001 - e.g. NotSupported on MIG slices
                logger.debug("NVML utilisation of device %d: %s", index, exc)
            try:
                memory = nv.nvmlDeviceGetMemoryInfo(handle)
                values["used"] = float(memory.used)
                values["total"] = float(memory.total)
            except Exception as exc:  # noqa: BLE001
                logger.debug("NVML memory of device %d: %s", index, exc)
            devices.append((labels, values))
        return devices


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
