"""The sinks' secrets: :mod:`fanout_core.secrets` (shared with the front door), under the
name the sink modules import."""

from fanout_core.secrets import Secret, SecretError, optional

__all__ = ["Secret", "SecretError", "optional"]
