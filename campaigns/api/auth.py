"""Who is calling: the main app's JWTs (one per user) or an opaque token from `campaigns api token`.

A JWT is signed by the main app, with a shared secret (HS256, `API_JWT_SECRET`) or a key from its JWKS
(`API_JWT_JWKS_URL`: RS256, ES256 or EdDSA, keys cached and fetched again when a token names a key not yet
seen, so the main app can rotate them). It must carry `sub` (the user, recorded in the audit log), `org`
(the main app's organization id, `organizations.external_id`), `role` (org_admin, agent or viewer) and
`exp`; `aud` and `iss` must be the configured ones when configured, with `API_JWT_LEEWAY_SECONDS` of clock
skew. An algorithm the server was not configured for is refused before any key is looked at: `alg: none`,
and an HS256 token made with an RSA public key as its secret, never pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt

from campaigns.api.errors import Unauthorized
from campaigns.store.schema import API_ROLES

ASYMMETRIC = ("RS256", "ES256", "EdDSA")
CLAIMS = ("sub", "org", "role", "exp")


@dataclass(frozen=True)
class JwtSettings:
    secret: str | None = None
    jwks_url: str | None = None
    audience: str | None = None
    issuer: str | None = None
    leeway_seconds: float = 30.0
    # A key id not in the cached set fetches it again, at most this often: a flood of made-up key ids must
    # not become a flood of requests to the main app.
    jwks_refetch_seconds: float = 30.0

    @classmethod
    def from_environment(cls) -> JwtSettings | None:
        """From the settings; None when neither a secret nor a JWKS URL is set (opaque tokens only)."""
        from campaigns.settings import get_settings

        s = get_settings()
        secret = s.api_jwt_secret.get_secret_value() if s.api_jwt_secret else None
        if not (secret or s.api_jwt_jwks_url):
            return None
        return cls(secret, s.api_jwt_jwks_url, s.api_jwt_audience, s.api_jwt_issuer, s.api_jwt_leeway_seconds)


@dataclass(frozen=True)
class Claims:
    user: str
    org: str
    role: str
    org_name: str | None


class JwtVerifier:
    def __init__(self, settings: JwtSettings) -> None:
        self.settings = settings
        self.algorithms = (("HS256",) if settings.secret else ()) + (ASYMMETRIC if settings.jwks_url else ())
        self.jwks = (
            jwt.PyJWKClient(settings.jwks_url, lifespan=300, timeout=5, cooldown_duration=settings.jwks_refetch_seconds)
            if settings.jwks_url
            else None
        )

    def claims(self, token: str) -> Claims:
        """The token's claims, if its signature, expiry, audience and issuer hold; Unauthorized saying why not."""
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError:
            raise Unauthorized("Invalid token: not a JWT nor a token from `campaigns api token`") from None
        if alg not in self.algorithms:
            raise Unauthorized(f"Invalid token: signed with {alg!r}; this server accepts {', '.join(self.algorithms)}")
        s = self.settings
        try:
            key: Any = s.secret if alg == "HS256" else self._published_key(token, alg)
            payload = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway_seconds,
                options={"require": [*CLAIMS, *(["aud"] if s.audience else []), *(["iss"] if s.issuer else [])]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("Token expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("Invalid token: not meant for this API (aud)") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("Invalid token: not issued by the configured issuer (iss)") from None
        except jwt.PyJWKClientError as exc:
            raise Unauthorized("Invalid token: its signing key is not in the JWKS", [str(exc)[:200]]) from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"Invalid token: {exc}") from None
        except (jwt.PyJWTError, TypeError, ValueError):  # a key that does not fit the algorithm the token names
            raise Unauthorized(f"Invalid token: its key cannot verify {alg}") from None
        return _checked(payload)

    def _published_key(self, token: str, alg: str) -> Any:
        """The JWKS key the token names, if it is published for the algorithm the token says it uses."""
        jwk = self._jwks().get_signing_key_from_jwt(token)
        if jwk.algorithm_name != alg:
            raise Unauthorized(f"Invalid token: its key is published for {jwk.algorithm_name}, not {alg}")
        return jwk.key

    def _jwks(self) -> jwt.PyJWKClient:
        assert self.jwks is not None  # an asymmetric alg is accepted only with a JWKS URL
        return self.jwks


def _checked(payload: dict[str, Any]) -> Claims:
    for claim in ("sub", "org"):
        value = payload[claim]
        if not isinstance(value, str | int) or not str(value).strip() or len(str(value)) > 255:
            raise Unauthorized(f"Invalid token: {claim} must be an id (text, at most 255 characters)")
        _text(str(value), claim)
    if payload["role"] not in API_ROLES:
        raise Unauthorized(f"Invalid token: role must be one of {', '.join(API_ROLES)} (got {payload['role']!r})")
    given = payload.get("org_name")  # a display name only: a bad one falls back to the id, it refuses nobody
    name = given if isinstance(given, str) and given.strip() and len(given) <= 255 else None
    if name:
        _text(name, "org_name")
    return Claims(str(payload["sub"]), str(payload["org"]), payload["role"], name)


def _text(value: str, claim: str) -> None:
    if "\x00" in value or not value.encode(errors="replace").decode() == value:
        raise Unauthorized(f"Invalid token: {claim} holds a NUL character or invalid text")
