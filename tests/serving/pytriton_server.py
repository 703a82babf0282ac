"""A real Triton Inference Server (bundled by PyTriton) serving tiny numpy models, for the Triton tests.

Run with the interpreter of `.venv-triton` (Debian's Python 3.11 + nvidia-pytriton; see the Makefile):

    .venv-triton/bin/python tests/serving/pytriton_server.py --http-port P1 --grpc-port P2 --metrics-port P3

Binds HTTP/gRPC/metrics on 127.0.0.1 only, prints "READY" on stdout once every model is loaded, and stops
cleanly on SIGTERM/SIGINT (or when tritonserver itself dies). Needs no GPU.

Models (all batched, max_batch_size 8; Triton reports the batch dimension as -1):
  add_sub  INPUT0, INPUT1 FP32 [-1, 4] -> OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (FP32 [-1, 4])
  upper    TEXT BYTES [-1, 1]          -> TEXT = upper(TEXT) (BYTES [-1, 1]), LENGTH = len(TEXT) (INT32)
  sleep    SECONDS FP32 [-1, 1]        -> sleeps max(SECONDS) (capped at 10 s), returns SECONDS unchanged
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


@batch
def _add_sub(INPUT0: np.ndarray, INPUT1: np.ndarray) -> dict[str, np.ndarray]:
    return {"OUTPUT0": (INPUT0 + INPUT1).astype(np.float32), "OUTPUT1": (INPUT0 - INPUT1).astype(np.float32)}


@batch
def _upper(TEXT: np.ndarray) -> dict[str, np.ndarray]:
    flat = [bytes(t) for t in TEXT.reshape(-1)]
    upper = np.array([t.upper() for t in flat], dtype=np.object_).reshape(TEXT.shape)
    length = np.array([len(t) for t in flat], dtype=np.int32).reshape(TEXT.shape)
    return {"TEXT": upper, "LENGTH": length}


@batch
def _sleep(SECONDS: np.ndarray) -> dict[str, np.ndarray]:
    time.sleep(float(min(max(float(SECONDS.max()), 0.0), 10.0)))
    return {"SECONDS": SECONDS.astype(np.float32)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--metrics-port", type=int, required=True)
    ap.add_argument("--address", default="127.0.0.1")
    ap.add_argument("--workspace", default=None,
                    help="PyTriton workspace dir (must not exist yet); default: under ~/.cache/pytriton")
    ap.add_argument("--log-verbose", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="pytriton_server: %(levelname)s %(name)s: %(message)s")

    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    config = TritonConfig(
        http_address=args.address,
        http_port=args.http_port,
        grpc_address=args.address,
        grpc_port=args.grpc_port,
        metrics_address=args.address,
        metrics_port=args.metrics_port,
        allow_gpu_metrics=False,
        exit_timeout_secs=5,
        log_verbose=args.log_verbose,
    )
    triton = Triton(config=config, workspace=args.workspace)
    try:
        batched = ModelConfig(max_batch_size=8)
        triton.bind(
            model_name="add_sub",
            infer_func=_add_sub,
            inputs=[Tensor(name="INPUT0", dtype=np.float32, shape=(4,)),
                    Tensor(name="INPUT1", dtype=np.float32, shape=(4,))],
            outputs=[Tensor(name="OUTPUT0", dtype=np.float32, shape=(4,)),
                     Tensor(name="OUTPUT1", dtype=np.float32, shape=(4,))],
            config=batched,
            strict=True,
        )
        triton.bind(
            model_name="upper",
            infer_func=_upper,
            inputs=[Tensor(name="TEXT", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="TEXT", dtype=bytes, shape=(1,)),
                     Tensor(name="LENGTH", dtype=np.int32, shape=(1,))],
            config=batched,
        )
        triton.bind(
            model_name="sleep",
            infer_func=_sleep,
            inputs=[Tensor(name="SECONDS", dtype=np.float32, shape=(1,))],
            outputs=[Tensor(name="SECONDS", dtype=np.float32, shape=(1,))],
            config=batched,
        )
        triton.run()  # starts tritonserver and waits until every bound model is loaded
        print("READY", flush=True)
        while not stop.wait(0.5):
            if not triton.is_alive():
                print("pytriton_server: tritonserver is no longer alive", file=sys.stderr, flush=True)
                return 1
        return 0
    finally:
        triton.stop()


if __name__ == "__main__":
    sys.exit(main())
