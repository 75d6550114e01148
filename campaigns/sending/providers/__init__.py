"""Providers by name: meta_cloud, evolution, sandbox."""

from campaigns.sending.providers.base import Credentials, OutboundMessage, Provider, SendResult
from campaigns.sending.providers.evolution import EvolutionProvider
from campaigns.sending.providers.meta_cloud import MetaCloudProvider, SandboxProvider

PROVIDERS: dict[str, type] = {
    "meta_cloud": MetaCloudProvider,
    "evolution": EvolutionProvider,
    "sandbox": SandboxProvider,
}


def build_provider(name: str, credentials: Credentials) -> Provider:
    try:
        return PROVIDERS[name](credentials)
    except KeyError:
        raise ValueError(f"provider: unknown provider {name!r} (choose one of {', '.join(PROVIDERS)})") from None


__all__ = ["Credentials", "OutboundMessage", "Provider", "SendResult", "build_provider"]
