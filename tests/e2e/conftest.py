"""Session fixtures of the e2e tests."""

from tests.e2e.flagship_support import flagship  # noqa: F401 - the shared flagship TorchServe + gateway
