"""TorchServe handlers: decode -> batch -> predict -> encode, one class per module."""
