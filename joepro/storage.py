"""Static files storage for production: hashed, compressed names (WhiteNoise)."""

from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticFilesStorage(CompressedManifestStaticFilesStorage):
    """Also rewrites the imports between JavaScript modules (`import … from "./x.js";`) to
    the hashed names, so a cached module never loads another version of what it imports."""

    support_js_module_import_aggregation = True
