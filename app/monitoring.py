"""Error reporting to Sentry, when SENTRY_DSN is set (imported lazily: sentry-sdk costs memory)."""
from __future__ import annotations

import config


def setup_sentry(settings: config.Settings) -> bool:
    if not settings.sentry_dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.huey import HueyIntegration

    sentry_sdk.init(dsn=settings.sentry_dsn, environment=settings.sentry_environment or None,
                    integrations=[HueyIntegration()], traces_sample_rate=0)
    return True
