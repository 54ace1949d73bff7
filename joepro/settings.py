"""Settings for the JoePro Sandbox Portal, all from the environment (and `.env`).

Every variable is listed with a one-line comment in `.env.example`. Nothing is required to run
the embedded default: SQLite, an embedded Celery broker and sandboxes on this machine.
"""

import hashlib
import ipaddress
import os
import secrets
import stat
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"  # local state of the embedded default: SQLite, broker, keys

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)
# An empty value (as in a copied .env.example) means "use the default", not "empty".
for _name in [name for name, value in os.environ.items() if value == ""]:
    del os.environ[_name]


def _private_state(path: Path, *, skip: tuple[Path, ...] = ()) -> None:
    """Make ``path`` (a file or a tree) readable by the portal's user only: no group or other
    bits on anything in it, except under ``skip``. Left alone when another user owns it."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if info.st_uid != os.geteuid() or stat.S_ISLNK(info.st_mode):
        return
    if info.st_mode & 0o077:
        os.chmod(path, stat.S_IMODE(info.st_mode) & 0o700)
    if stat.S_ISDIR(info.st_mode):
        for entry in os.scandir(path):
            if Path(entry.path) not in skip:
                _private_state(Path(entry.path), skip=skip)


def _private_var() -> None:
    """var/ holds the SQLite database (session keys, password hashes), the secret key, the SSH
    host key and the broker's messages: it is made 0700, and whatever in it others could read
    is tightened at every start-up. Workspaces under var/sandboxes are left as they are: sandboxes
    reach them without traversing var/ (see sandboxes.providers.local.agent.reveal_root)."""
    VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    _private_state(VAR_DIR, skip=(VAR_DIR / "sandboxes",))


_private_var()


def _persisted_secret_key() -> str:
    """A random key kept in var/ so that sessions survive restarts when none is configured."""
    path = VAR_DIR / "secret_key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(50))
    return path.read_text().strip()


DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="") or _persisted_secret_key()
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.sites",
    "channels",
    "ninja",
    "csp",
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.github",
    "allauth.socialaccount.providers.google",
    "allauth.socialaccount.providers.openid_connect",
    "accounts",
    "sandboxes",
    "environments",
    "usage",
]

MIDDLEWARE = [
    "joepro.health.HealthMiddleware",  # /healthz, /readyz, /metrics: before the host check (see there)
    "django.middleware.security.SecurityMiddleware",
    "joepro.request_context.RequestIdMiddleware",  # X-Request-ID, and the id on the request's log lines
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "joepro.request_context.UserIdMiddleware",  # the signed-in user's id on the request's log lines
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "allauth.account.middleware.AccountMiddleware",
]

ROOT_URLCONF = "joepro.urls"
WSGI_APPLICATION = "joepro.wsgi.application"
ASGI_APPLICATION = "joepro.asgi.application"
SITE_ID = 1

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A pool per process: under ASGI each request has its own connection, and opening one per
    # request costs milliseconds and, in a burst, more connections than the server allows.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": env.int("DATABASE_POOL_MAX_SIZE", default=20),
        "timeout": env.float("DATABASE_POOL_TIMEOUT", default=20),
    }
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    _sqlite = Path(DATABASES["default"]["NAME"])
    if DATABASES["default"]["NAME"] != ":memory:":
        # Made 0600 before SQLite makes it (its -wal and -shm files take the database's mode).
        _sqlite.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(_sqlite, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        for _suffix in ("", "-wal", "-shm", "-journal"):
            _private_state(Path(f"{_sqlite}{_suffix}"))
    # Concurrent launches wait on SQLite's write lock instead of failing at once.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "joepro.cache.SharedPoolRedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# Live updates of the dashboard: pushed over websockets across processes through Redis. Without
# Redis (the embedded default) the web server, the worker and beat share nothing, so pages poll.
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py 8 reads with a 5 s timeout by default, no longer than the layer's own
                # blocking receive (5 s): without a longer one every quiet websocket is torn down.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
                "prefix": env.str("CHANNELS_PREFIX", default="joepro-channels"),
            },
        }
    }
else:
    CHANNEL_LAYERS = {}
SANDBOX_LIVE_PUSH = bool(CHANNEL_LAYERS)
# How often a page polls for changes when nothing pushes them (seconds).
SANDBOX_LIVE_POLL_SECONDS = env.int("SANDBOX_LIVE_POLL_SECONDS", default=2)
# Live-update websockets one user may have open at once, across processes (0 = no cap).
SANDBOX_LIVE_CONNECTIONS_PER_USER = env.int("SANDBOX_LIVE_CONNECTIONS_PER_USER", default=16)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.path("DJANGO_STATIC_ROOT", default=BASE_DIR / "var" / "staticfiles")
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "joepro.storage.StaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# --- Accounts (django-allauth) -------------------------------------------------------------
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "/sandbox-portal/"
ACCOUNT_LOGOUT_REDIRECT_URL = "/sandbox-portal/"
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = "username"  # filled in from the email by the adapter
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_EMAIL_VERIFICATION = env.str("ACCOUNT_EMAIL_VERIFICATION", default="optional")
ACCOUNT_ADAPTER = "accounts.adapter.AccountAdapter"
# New accounts per hour from all addresses together (0 = no cap); allauth limits each address.
ACCOUNT_SIGNUPS_PER_HOUR = env.int("ACCOUNT_SIGNUPS_PER_HOUR", default=50)
ACCOUNT_USER_DISPLAY = "accounts.adapter.user_display"
ACCOUNT_SESSION_REMEMBER = None
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
SOCIALACCOUNT_ONLY = False
SOCIALACCOUNT_EMAIL_AUTHENTICATION = False  # never link accounts by an unverified provider email
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="JoePro Sandbox Portal <noreply@localhost>")


def _social_app(prefix: str, **extra) -> list[dict]:
    client_id = env.str(f"{prefix}_CLIENT_ID", default="")
    if not client_id:
        return []
    return [{"client_id": client_id, "secret": env.str(f"{prefix}_CLIENT_SECRET", default=""), **extra}]


SOCIALACCOUNT_PROVIDERS = {
    "github": {"APPS": _social_app("GITHUB"), "SCOPE": ["user:email"]},
    "google": {"APPS": _social_app("GOOGLE"), "SCOPE": ["profile", "email"]},
    "openid_connect": {
        "APPS": _social_app(
            "OIDC",
            provider_id=env.str("OIDC_PROVIDER_ID", default="oidc"),
            name=env.str("OIDC_PROVIDER_NAME", default="Single sign-on"),
            settings={"server_url": env.str("OIDC_SERVER_URL", default="")},
        )
    },
}

# --- Security ------------------------------------------------------------------------------
# The proxies in front (addresses or CIDRs) whose X-Forwarded-For and X-Forwarded-Proto the web
# server believes (bin/serve hands them to uvicorn); empty: none, the client is the peer.
TRUSTED_PROXIES = [proxy.strip() for proxy in env.list("TRUSTED_PROXIES", default=[]) if proxy.strip()]
for _proxy in TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError:
        raise ImproperlyConfigured(f"TRUSTED_PROXIES: {_proxy!r} is not an IP address or network") from None
# Sign-in rate limits key on REMOTE_ADDR, the address the server resolved from trusted proxies
# only; never on a header any client can set.
ALLAUTH_TRUSTED_PROXY_COUNT = 0
ALLAUTH_TRUSTED_CLIENT_IP_HEADER = None
# The portal runs behind a TLS-terminating proxy in production; that proxy must set
# X-Forwarded-Proto (and strip it from clients). Deployments without one switch it off.
if env.bool("DJANGO_TRUST_X_FORWARDED_PROTO", default=True):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env.int("DJANGO_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = env.bool("DJANGO_HSTS_PRELOAD", default=False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SILENCED_SYSTEM_CHECKS = env.list("DJANGO_SILENCED_SYSTEM_CHECKS", default=[])
if SECURE_HSTS_SECONDS and not SECURE_HSTS_PRELOAD:
    SILENCED_SYSTEM_CHECKS.append("security.W021")  # preload is an opt-in list, not a default

CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "frame-ancestors": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "object-src": ["'none'"],
    }
}

# --- Celery --------------------------------------------------------------------------------
CELERY_BROKER_URL = REDIS_URL or "filesystem://"
if not REDIS_URL:
    _broker_dir = VAR_DIR / "broker"
    _broker_dir.mkdir(mode=0o700, exist_ok=True)
    for _sub in ("in", "processed"):
        (_broker_dir / _sub).mkdir(mode=0o700, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "in"),
        "data_folder_out": str(_broker_dir / "in"),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
    }
else:
    # Longer than any task's time limit plus its longest retry countdown, so a task held by a
    # live worker is never handed to a second one; a task whose worker died is redelivered
    # after it. Tests of redelivery shorten it.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600)}
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = 600
CELERY_TASK_SOFT_TIME_LIMIT = 540
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = TIME_ZONE
# Periodic lifecycle passes. Each message expires after one interval, so a backlog built up
# while no worker ran is not replayed pass after pass. Exactly one beat may run (docs/operations.md).
SANDBOX_RECONCILE_SECONDS = env.int("SANDBOX_RECONCILE_SECONDS", default=300)
SANDBOX_IDLE_CHECK_SECONDS = env.int("SANDBOX_IDLE_CHECK_SECONDS", default=300)
CELERY_BEAT_SCHEDULE: dict = {
    "reconcile-sandboxes": {
        "task": "sandboxes.tasks.reconcile_sandboxes",
        "schedule": SANDBOX_RECONCILE_SECONDS,
        "options": {"expires": SANDBOX_RECONCILE_SECONDS},
    },
    "stop-idle-sandboxes": {
        "task": "sandboxes.tasks.stop_idle_sandboxes",
        "schedule": SANDBOX_IDLE_CHECK_SECONDS,
        "options": {"expires": SANDBOX_IDLE_CHECK_SECONDS},
    },
    "warn-before-idle-stop": {
        "task": "sandboxes.tasks.warn_before_idle_stop",
        "schedule": 60,
        "options": {"expires": 60},
    },
    "reap-terminal-sessions": {
        "task": "sandboxes.tasks.reap_terminal_sessions",
        "schedule": 60,
        "options": {"expires": 60},
    },
    "roll-up-usage": {
        "task": "usage.tasks.roll_up_usage",
        "schedule": env.int("USAGE_ROLLUP_SECONDS", default=3600),
        "options": {"expires": 3600},
    },
    "check-budgets": {
        "task": "usage.tasks.check_budgets",
        "schedule": env.int("BUDGET_CHECK_SECONDS", default=60),
        "options": {"expires": 60},
    },
    "request-template-builds": {
        "task": "environments.tasks.request_template_builds",
        "schedule": env.int("TEMPLATE_BUILD_CHECK_SECONDS", default=600),
        "options": {"expires": 600},
    },
    "sample-resources": {
        "task": "usage.tasks.sample_resources",
        "schedule": env.int("RESOURCE_SAMPLE_SECONDS", default=60),
        "options": {"expires": 60},
    },
}

# --- Templates ---------------------------------------------------------------------------------

# Each template version is built once per provider in the background (environments.builds): when
# a worker starts, and every TEMPLATE_BUILD_CHECK_SECONDS for versions still unbuilt.
TEMPLATE_BUILDS_AT_WORKER_START = env.bool("TEMPLATE_BUILDS_AT_WORKER_START", default=True)
# How many sandboxes a user may keep, one per template (1: one sandbox, as before templates).
SANDBOX_MAX_PER_USER = env.int("SANDBOX_MAX_PER_USER", default=1)

# --- Usage, cost and budgets ----------------------------------------------------------------


def _decimal(name: str, default: str | None) -> Decimal | None:
    value = env.str(name, default=default)
    return None if value is None else Decimal(value)


# Rates default to Daytona's published prices (daytona.io/pricing, as summarised in December
# 2026): $0.0504 per vCPU-hour, $0.0162 per GiB-hour of memory, $0.000108 per GiB-hour of disk
# beyond 5 GiB free per sandbox. Compute is charged while a sandbox runs, disk while it exists
# and is not archived. Check the vendor's page (or your contract) before showing them to users.
USAGE_CURRENCY = env.str("USAGE_CURRENCY", default="USD")
USAGE_RATE_VCPU_HOUR = _decimal("USAGE_RATE_VCPU_HOUR", "0.0504")
USAGE_RATE_MEMORY_GIB_HOUR = _decimal("USAGE_RATE_MEMORY_GIB_HOUR", "0.0162")
USAGE_RATE_DISK_GIB_HOUR = _decimal("USAGE_RATE_DISK_GIB_HOUR", "0.000108")
USAGE_FREE_DISK_GIB = env.int("USAGE_FREE_DISK_GIB", default=5)
# Everyone's monthly budget (in USAGE_CURRENCY) and running-hours cap; empty: none. Operators
# override them per user in admin (Usage > Budgets).
BUDGET_MONTHLY_COST = _decimal("BUDGET_MONTHLY_COST", None)
BUDGET_MONTHLY_RUNNING_HOURS = env.int("BUDGET_MONTHLY_RUNNING_HOURS", default=None)
# What happens at 100 %: "refuse" new starts, or "stop" the running sandbox after a warning of
# BUDGET_STOP_GRACE_MINUTES (and refuse new starts too). Users are alerted at these percents.
BUDGET_ACTION = env.str("BUDGET_ACTION", default="refuse")
if BUDGET_ACTION not in ("refuse", "stop"):
    raise ImproperlyConfigured(f"BUDGET_ACTION must be 'refuse' or 'stop', not {BUDGET_ACTION!r}.")
BUDGET_STOP_GRACE_MINUTES = env.int("BUDGET_STOP_GRACE_MINUTES", default=10)
BUDGET_ALERT_PERCENTS = [80, 100]
# Memory and disk of running sandboxes: the owner is alerted at this percent of either.
RESOURCE_ALERT_PERCENT = env.int("RESOURCE_ALERT_PERCENT", default=90)

# --- Monitoring ------------------------------------------------------------------------------
# /metrics (Prometheus) answers a bearer token, or clients in these networks; neither set: nobody.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_ALLOWED_NETWORKS = [
    ipaddress.ip_network(network, strict=False) for network in env.list("METRICS_ALLOWED_NETWORKS", default=[])
]
# Users counted as active: a person used their sandbox within this many minutes.
METRICS_ACTIVE_USER_MINUTES = env.int("METRICS_ACTIVE_USER_MINUTES", default=15)
# Logs: "plain" lines or "json" (one object per line with request, user and sandbox ids).
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")

# --- Sandboxes -----------------------------------------------------------------------------
DAYTONA_API_KEY = env.str("DAYTONA_API_KEY", default="")
DAYTONA_API_URL = env.str("DAYTONA_API_URL", default="https://app.daytona.io/api")
DAYTONA_TARGET = env.str("DAYTONA_TARGET", default="us")
DAYTONA_HTTP_TIMEOUT = env.float("DAYTONA_HTTP_TIMEOUT", default=10.0)
# The signing secret of the Daytona webhook endpoint (Svix, "whsec_..."); empty: webhooks are refused.
DAYTONA_WEBHOOK_SECRET = env.str("DAYTONA_WEBHOOK_SECRET", default="")
SANDBOX_PROVIDER = env.str("SANDBOX_PROVIDER", default="daytona" if DAYTONA_API_KEY else "local")
SANDBOX_DEPLOYMENT = env.str("SANDBOX_DEPLOYMENT", default="joepro")
SANDBOX_IMAGE = env.str("SANDBOX_IMAGE", default="node:20-bookworm")
SANDBOX_SNAPSHOT = env.str("SANDBOX_SNAPSHOT", default="")
SANDBOX_CPU = env.int("SANDBOX_CPU", default=2)
SANDBOX_MEMORY_GB = env.int("SANDBOX_MEMORY_GB", default=4)
SANDBOX_DISK_GB = env.int("SANDBOX_DISK_GB", default=8)
SANDBOX_IDLE_MINUTES = env.int("SANDBOX_IDLE_MINUTES", default=120)
# The idle period each user may choose for themselves, and the operator's cap on it.
SANDBOX_IDLE_MIN_MINUTES = env.int("SANDBOX_IDLE_MIN_MINUTES", default=15)
SANDBOX_IDLE_MAX_MINUTES = env.int("SANDBOX_IDLE_MAX_MINUTES", default=480)
# How long before an idle stop the pages show a warning (and opted-in users get an email).
SANDBOX_IDLE_WARNING_MINUTES = env.int("SANDBOX_IDLE_WARNING_MINUTES", default=10)
# Extensions (+1 h, +4 h) never put the idle stop further than this from now.
SANDBOX_EXTEND_MAX_MINUTES = env.int("SANDBOX_EXTEND_MAX_MINUTES", default=480)
SANDBOX_EXTEND_CHOICES_MINUTES = [60, 240]
# The timeline notes what kept a sandbox awake at most this often per kind of use.
SANDBOX_ACTIVITY_MARK_MINUTES = env.int("SANDBOX_ACTIVITY_MARK_MINUTES", default=15)
SANDBOX_REMOTE_AUTO_STOP_MINUTES = env.int("SANDBOX_REMOTE_AUTO_STOP_MINUTES", default=SANDBOX_IDLE_MINUTES + 30)
SANDBOX_SSH_TOKEN_MINUTES = env.int("SANDBOX_SSH_TOKEN_MINUTES", default=120)
SANDBOX_PREVIEW_PORT = env.int("SANDBOX_PREVIEW_PORT", default=3000)
# Previews live on a site of their own: <port>-<sandbox id>.<preview host>, served by this same
# server (production: a wildcard DNS name and certificate for it). Subdomains of localhost
# resolve to loopback in browsers and are each a site of their own. PORTAL_URL is where the
# preview sends a visitor to sign in; it and SANDBOX_PREVIEW_URL default to the port bin/run uses.
_SERVER_PORT = env.int("PORT", default=8000)
PORTAL_URL = env.str("PORTAL_URL", default=f"http://127.0.0.1:{_SERVER_PORT}").rstrip("/")
SANDBOX_PREVIEW_URL = env.str("SANDBOX_PREVIEW_URL", default=f"http://localhost:{_SERVER_PORT}").rstrip("/")
# Concurrent preview requests and websockets, per sandbox and per client address (each web process).
SANDBOX_PREVIEW_CONNECTIONS_PER_SANDBOX = env.int("SANDBOX_PREVIEW_CONNECTIONS_PER_SANDBOX", default=64)
SANDBOX_PREVIEW_CONNECTIONS_PER_CLIENT = env.int("SANDBOX_PREVIEW_CONNECTIONS_PER_CLIENT", default=32)
SANDBOX_LAUNCH_WAIT_SECONDS = env.float("SANDBOX_LAUNCH_WAIT_SECONDS", default=5.0)
SANDBOX_LAUNCH_RATE = env.str("SANDBOX_LAUNCH_RATE", default="30/m")
SANDBOX_MAX_SANDBOXES = env.int("SANDBOX_MAX_SANDBOXES", default=100)  # existing at once; 0 = no cap
SANDBOX_MAX_RUNNING = env.int("SANDBOX_MAX_RUNNING", default=50)  # running at once; 0 = no cap
# Access handed out again while it stays valid at least this long; newer tokens otherwise.
SANDBOX_ACCESS_REUSE_MARGIN = timedelta(minutes=env.int("SANDBOX_ACCESS_REUSE_MARGIN_MINUTES", default=30))
# Local provider: where workspaces live (never inside a path sandboxes see), the SSH gateway
# users are told to connect to, bubblewrap, the host uids of sandboxes and their cgroups.


def _default_local_root() -> Path:
    """var/sandboxes. Sandboxes' uids reach it even though var/ is 0700 (the launcher reveals
    the root to bwrap in a mount namespace of its own). Earlier versions put it under
    /var/lib/joepro when run as root in a checkout other users could not traverse; such a root
    is kept while it exists and var/sandboxes does not."""
    root = VAR_DIR / "sandboxes"
    earlier = Path("/var/lib/joepro") / hashlib.sha256(str(BASE_DIR).encode()).hexdigest()[:12] / "sandboxes"
    if os.geteuid() == 0 and not root.exists() and earlier.exists():
        return earlier
    return root


SANDBOX_LOCAL_ROOT = Path(env.str("SANDBOX_LOCAL_ROOT", default="") or _default_local_root()).absolute()
SANDBOX_SSH_HOST = env.str("SANDBOX_SSH_HOST", default="localhost")
SANDBOX_SSH_PORT = env.int("SANDBOX_SSH_PORT", default=2222)
# Wrong SSH tokens per client address and minute, then refused unchecked for the cool-down.
SANDBOX_SSH_FAILED_TOKENS_PER_MINUTE = env.int("SANDBOX_SSH_FAILED_TOKENS_PER_MINUTE", default=10)
SANDBOX_SSH_THROTTLE_SECONDS = env.int("SANDBOX_SSH_THROTTLE_SECONDS", default=300)
SANDBOX_BWRAP = env.str("SANDBOX_BWRAP", default="bwrap")
SANDBOX_LOCAL_UID_BASE = env.int("SANDBOX_LOCAL_UID_BASE", default=2_000_000_000)
# Claims of those uids, shared by every deployment on this host (so none hands out another's).
SANDBOX_LOCAL_UID_REGISTRY = env.path("SANDBOX_LOCAL_UID_REGISTRY", default="/var/lib/joepro/uids")
# Live PTY sessions (web terminals and SSH shells together) one local sandbox's agent holds at once.
SANDBOX_LOCAL_PTY_SESSIONS = env.int("SANDBOX_LOCAL_PTY_SESSIONS", default=64)
SANDBOX_LOCAL_CGROUP_PARENT = env.str("SANDBOX_LOCAL_CGROUP_PARENT", default="joepro-sandboxes")
# Outbound network for local sandboxes through slirp4netns (private ranges and the host's own
# addresses stay unreachable); off: loopback only, as before.
SANDBOX_LOCAL_NETWORK = env.bool("SANDBOX_LOCAL_NETWORK", default=True)
# Lifecycle: rows in creating/starting/stopping longer than this are repaired by reconcile.
SANDBOX_STUCK_MINUTES = env.int("SANDBOX_STUCK_MINUTES", default=15)
# Activity is written to the database at most this often per sandbox (heartbeats every minute).
SANDBOX_ACTIVITY_WRITE_SECONDS = env.int("SANDBOX_ACTIVITY_WRITE_SECONDS", default=60)
# The provider's idle timer is refreshed at most this often per sandbox while the portal sees activity.
SANDBOX_ACTIVITY_REFRESH_MINUTES = env.int("SANDBOX_ACTIVITY_REFRESH_MINUTES", default=10)
# Web terminal sessions: at most this many per sandbox; one nobody has been attached to for this
# long is ended (its shell killed); attached clients renew their claim this often.
SANDBOX_TERMINAL_SESSIONS = env.int("SANDBOX_TERMINAL_SESSIONS", default=8)
SANDBOX_TERMINAL_DETACHED_MINUTES = env.int("SANDBOX_TERMINAL_DETACHED_MINUTES", default=30)
SANDBOX_TERMINAL_RENEW_SECONDS = env.int("SANDBOX_TERMINAL_RENEW_SECONDS", default=60)
# Terminal websockets one user may have open at once, across processes (0 = no cap).
SANDBOX_TERMINAL_CONNECTIONS_PER_USER = env.int("SANDBOX_TERMINAL_CONNECTIONS_PER_USER", default=8)
# The recent output kept per web terminal session and replayed when a browser reattaches.
SANDBOX_TERMINAL_SCROLLBACK_BYTES = env.int("SANDBOX_TERMINAL_SCROLLBACK_BYTES", default=64 * 1024)
# Provider calls in flight at once when stopping or looking up many sandboxes.
SANDBOX_STOP_CONCURRENCY = env.int("SANDBOX_STOP_CONCURRENCY", default=64)
# SSH gateway of local sandboxes (manage.py run_ssh_gateway). It listens on loopback unless told
# otherwise; the host key (relative to the project directory) is generated at the first start.
SANDBOX_SSH_BIND = env.str("SANDBOX_SSH_BIND", default="127.0.0.1")
SANDBOX_SSH_HOST_KEY = BASE_DIR / env.str("SANDBOX_SSH_HOST_KEY", default="var/ssh_host_ed25519_key")

# Console lines, plain or JSON (LOG_FORMAT), redacted and with the request, user and sandbox ids
# (joepro/logging.py). Uvicorn's own loggers write through the same handler once the app loads,
# and Celery's worker and beat use this configuration too (joepro/celery.py).
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json, not {LOG_FORMAT!r}")
LOGGING_CONFIG = "joepro.logging.configure"  # dictConfig, and Python's warnings as log lines
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "joepro.logging.ContextFilter"}},
    "formatters": {
        "plain": {"()": "joepro.logging.PlainFormatter", "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "joepro.logging.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # httpx logs request URLs at INFO, and toolbox URLs carry sandbox ids and session names.
    "loggers": {
        "daytona": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        # No level: uvicorn's --log-level still applies.
        "uvicorn": {"handlers": ["console"], "propagate": False},
        "uvicorn.access": {"handlers": ["console"], "propagate": False},
    },
}
