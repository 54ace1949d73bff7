from datetime import timedelta

from allauth.account.adapter import DefaultAccountAdapter
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.utils import timezone

SIGNUPS_FULL_MESSAGE = (
    "This portal has taken all the sign-ups it accepts in an hour. Please try again later; "
    "existing accounts can still sign in."
)


def signups_full() -> bool:
    """Whether ``ACCOUNT_SIGNUPS_PER_HOUR`` accounts (0: no cap) joined in the last hour, from any
    address (allauth's own limit counts per address only)."""
    limit = settings.ACCOUNT_SIGNUPS_PER_HOUR
    if limit <= 0:
        return False
    since = timezone.now() - timedelta(hours=1)
    return get_user_model().objects.filter(date_joined__gte=since).count() >= limit


class AccountAdapter(DefaultAccountAdapter):
    """Sign-up is open (up to ``ACCOUNT_SIGNUPS_PER_HOUR``); everyone who signs in lands back on
    the portal."""

    def get_login_redirect_url(self, request):
        return super().get_login_redirect_url(request) or settings.LOGIN_REDIRECT_URL

    def clean_email(self, email: str) -> str:
        """On the sign-up form, refuse once the hour's sign-ups are taken (shown on the page)."""
        email = super().clean_email(email)
        match = getattr(self.request, "resolver_match", None)
        if match is not None and match.url_name == "account_signup" and signups_full():
            raise ValidationError(SIGNUPS_FULL_MESSAGE, code="signups_full")
        return email


def user_display(user) -> str:
    """Users sign in by email; the generated username means nothing to them."""
    return user.email or user.get_username()
