from allauth.account.adapter import DefaultAccountAdapter
from django.conf import settings


class AccountAdapter(DefaultAccountAdapter):
    """Sign-up is open; everyone who signs in lands back on the portal."""

    def get_login_redirect_url(self, request):
        return super().get_login_redirect_url(request) or settings.LOGIN_REDIRECT_URL
