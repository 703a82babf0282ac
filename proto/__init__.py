"""The wire contract: gRPC message classes for the gateway and its clients, from `proto/*.proto`.

One package owns the contract so the gateway (``serving/``) and the SDK (``clients/``) share it without the
SDK importing the gateway. The ``.proto`` sources ship beside a compiled descriptor set
(``descriptors.binpb``, built with grpc_tools' protoc by ``zoo gen-protos`` and checked for freshness by
``tests/test_architecture.py``), so an installed wheel needs no compiler and writes nothing into its install
directory. If the sources were edited without regenerating (a development checkout), the set is compiled
once into the user cache (``$ZOO_HOME/proto``), never next to the sources.

Message classes come from a *private* descriptor pool: the OIP service must be
``inference.GRPCInferenceService``, and tritonclient registers the same ``inference.*`` symbols in protobuf's
default pool; two files defining one symbol there fail at import ("duplicate symbol"). With a private pool
the gateway, its tests and a tritonclient can share one process.

Use: ``from proto import oip, ts, stream`` then ``oip.ModelInferRequest()``, ``ts.PredictionsRequest()``;
``stream`` holds the gateway's own video-stream service messages (``zoo_stream.proto``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILES = ("grpc_predict_v2.proto", "torchserve_inference.proto", "zoo_stream.proto")
DESCRIPTOR_SET = PROTO_DIR / "descriptors.binpb"
HASH_FILE = PROTO_DIR / "descriptors.sha256"  # sha256 of the sources the shipped set was compiled from

OIP_PACKAGE = "inference"
OIP_SERVICE = "inference.GRPCInferenceService"
TS_PACKAGE = "org.pytorch.serve.grpc.inference"
TS_SERVICE = "org.pytorch.serve.grpc.inference.InferenceAPIsService"
STREAM_PACKAGE = "zoo.stream.v1"
STREAM_SERVICE = "zoo.stream.v1.DetectionStream"


def serialize(msg: Any) -> bytes:
    """gRPC request/response serializer for these message classes."""
    return msg.SerializeToString()


def sources_hash() -> str:
    """sha256 over the .proto sources (names and contents)."""
    digest = hashlib.sha256()
    for name in PROTO_FILES:
        digest.update(name.encode() + b"\0" + (PROTO_DIR / name).read_bytes() + b"\0")
    return digest.hexdigest()


def compile_descriptor_set() -> bytes:
    """Run grpc_tools' protoc on the sources (a development dependency) and return the descriptor set."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory(prefix="zoo-protoc-") as tmp:
        out = Path(tmp) / "set.binpb"
        args = ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"--descriptor_set_out={out}", "--include_imports",
                *(str(PROTO_DIR / name) for name in PROTO_FILES)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {', '.join(PROTO_FILES)} in {PROTO_DIR}")
        return out.read_bytes()


def write_descriptor_set() -> Path:
    """`zoo gen-protos`: recompile the shipped descriptor set and its source hash (run after editing a .proto)."""
    data = compile_descriptor_set()
    DESCRIPTOR_SET.write_bytes(data)
    HASH_FILE.write_text(sources_hash() + "\n")
    return DESCRIPTOR_SET


def _cache_dir() -> Path:
    return Path(os.environ.get("ZOO_HOME", Path.home() / ".cache" / "zoo-gateway")).expanduser() / "proto"


def is_stale() -> bool:
    """True when the sources differ from what the shipped descriptor set was compiled from."""
    try:
        return HASH_FILE.read_text().strip() != sources_hash()
    except FileNotFoundError:
        return True


def descriptor_set_bytes() -> bytes:
    """The shipped descriptor set, or (sources edited since) one compiled into the user cache."""
    if not is_stale():
        return DESCRIPTOR_SET.read_bytes()
    cached = _cache_dir() / f"{sources_hash()}.binpb"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cached.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(compile_descriptor_set())
        os.replace(tmp, cached)  # atomic: concurrent processes never read half a file
    return cached.read_bytes()


def _load() -> tuple[SimpleNamespace, SimpleNamespace, SimpleNamespace, descriptor_pool.DescriptorPool]:
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set_bytes())
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
