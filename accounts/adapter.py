from allauth.account.adapter import DefaultAccountAdapter
from django.conf import settings


class AccountAdapter(DefaultAccountAdapter):
    """Sign-up is open; everyone who signs in lands back on the portal."""

    def get_login_redirect_url(self, request):
        return super().get_login_redirect_url(request) or settings.LOGIN_REDIRECT_URL


def user_display(user) -> str:
    """Users sign in by email; the generated username means nothing to them."""
    return user.email or user.get_username()
