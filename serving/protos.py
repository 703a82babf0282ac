"""gRPC message classes for the gateway, generated reproducibly from `proto/*.proto` with grpc_tools.

`zoo gen-protos` (or the first import of this module, when the output is missing or stale) runs
grpc_tools' protoc on the .proto files and writes a descriptor set plus the hash of its inputs to
`serving/_generated/` (gitignored, never edited by hand). Message classes are then built from that
descriptor set in a *private* descriptor pool.

Why a private pool instead of importing generated `*_pb2.py` modules: the OIP service must be
`inference.GRPCInferenceService`, and tritonclient registers the same `inference.*` symbols in protobuf's
default pool; two files defining one symbol there fail at import ("duplicate symbol"). With a private pool
the gateway, its tests and a tritonclient can share one process.

Use: ``from serving.protos import oip, ts`` then ``oip.ModelInferRequest()``, ``ts.PredictionsRequest()``;
``stream`` holds the gateway's own video-stream service messages (`proto/zoo_stream.proto`).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTO_DIR = Path(__file__).resolve().parent.parent / "proto"
PROTO_FILES = ("grpc_predict_v2.proto", "torchserve_inference.proto", "zoo_stream.proto")
GENERATED_DIR = Path(__file__).resolve().parent / "_generated"
DESCRIPTOR_SET = GENERATED_DIR / "protos.binpb"
HASH_FILE = GENERATED_DIR / "protos.sha256"

OIP_PACKAGE = "inference"
OIP_SERVICE = "inference.GRPCInferenceService"
TS_PACKAGE = "org.pytorch.serve.grpc.inference"
TS_SERVICE = "org.pytorch.serve.grpc.inference.InferenceAPIsService"
STREAM_PACKAGE = "zoo.stream.v1"
STREAM_SERVICE = "zoo.stream.v1.DetectionStream"


def serialize(msg: Any) -> bytes:
    """gRPC request/response serializer for these message classes."""
    return msg.SerializeToString()


def proto_hash() -> str:
    """Hash of the .proto inputs (names and contents) and the protoc version that compiles them."""
    from grpc_tools import protoc

    digest = hashlib.sha256(getattr(protoc, "__file__", "").encode())
    for name in PROTO_FILES:
        digest.update(name.encode() + b"\0" + (PROTO_DIR / name).read_bytes() + b"\0")
    return digest.hexdigest()


def is_stale() -> bool:
    if not PROTO_DIR.is_dir():  # installed without the sources: use what was generated at build time
        return not DESCRIPTOR_SET.exists()
    try:
        return HASH_FILE.read_text().strip() != proto_hash() or not DESCRIPTOR_SET.exists()
    except FileNotFoundError:
        return True


def generate(force: bool = False) -> Path:
    """(Re)generate the descriptor set if missing or stale; returns its path. Safe to run concurrently."""
    if not force and not is_stale():
        return DESCRIPTOR_SET
    from grpc_tools import protoc

    GENERATED_DIR.mkdir(parents=True, exist_ok=True)
    (GENERATED_DIR / "__init__.py").touch()
    fd, tmp = tempfile.mkstemp(dir=GENERATED_DIR, prefix=".protos-", suffix=".tmp")
    os.close(fd)
    try:
        args = ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"--descriptor_set_out={tmp}", "--include_imports",
                *(str(PROTO_DIR / name) for name in PROTO_FILES)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {', '.join(PROTO_FILES)} in {PROTO_DIR}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, DESCRIPTOR_SET)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    HASH_FILE.write_text(proto_hash() + "\n")
    return DESCRIPTOR_SET


def _load() -> tuple[SimpleNamespace, SimpleNamespace, SimpleNamespace, descriptor_pool.DescriptorPool]:
    generate()
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file_proto in files.file:
        pool.Add(file_proto)

    def namespace(package: str) -> SimpleNamespace:
        out = SimpleNamespace()
        for file_proto in files.file:
            if file_proto.package != package:
                continue
            for msg in file_proto.message_type:
                desc = pool.FindMessageTypeByName(f"{package}.{msg.name}")
                setattr(out, msg.name, message_factory.GetMessageClass(desc))
        return out

    return namespace(OIP_PACKAGE), namespace(TS_PACKAGE), namespace(STREAM_PACKAGE), pool


oip, ts, stream, pool = _load()


def main() -> int:
    path = generate(force="--force" in sys.argv)
    print(f"{path} ({', '.join(PROTO_FILES)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
