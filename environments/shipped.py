"""The templates a deployment ships with. Node.js is the default: what every sandbox was
before templates (Node.js 20 on node:20-bookworm, 2 CPUs, 4 GB, 8 GB)."""

# A run of the user's app in ~/app after every start, when they made one (npm run dev, else
# npm start); nothing when there is none.
NODE_START = (
    "if [ -f app/package.json ]; then cd app && if grep -q '\"dev\"' package.json; "
    "then exec npm run dev; else exec npm start; fi; fi"
)

# A virtualenv of the template's own, read-only in the sandbox: what the user installs goes to
# ~/.local (pip's --user, its default here), seen by the same python.
PYTHON_ENVIRONMENT = [
    "python3 -m venv --system-site-packages /opt/template/python",
    "/opt/template/python/bin/pip install -U pip",
    "printf '[install]\\nuser = true\\n' > /opt/template/python/pip.conf",
]

PYTHON_APP = '''"""A first app: edit it, or replace it with your own. It serves port 3000, your preview."""

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"Hello from your Python sandbox.\\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("0.0.0.0", 3000), Hello).serve_forever()
'''

TEMPLATES = [
    {
        "slug": "nodejs",
        "name": "Node.js / Next.js",
        "description": "Node.js 20 with npm and create-next-app. Start a Next.js app with "
        "`create-next-app app`; an app in ~/app starts again by itself after every resume, and "
        "whatever serves port 3000 is your preview.",
        "position": 10,
        "is_default": True,
        "base_image": "node:20-bookworm",
        "programs": ["node", "npm", "git"],
        "npm_packages": ["create-next-app@15"],
        "start_command": NODE_START,
    },
    {
        "slug": "python",
        "name": "Python",
        "description": "A current Python 3 with pip and venv in a virtual environment of its own, and a "
        "first app in ~/app that serves port 3000 and starts by itself after every resume.",
        "position": 20,
        "base_image": "python:3.12-bookworm",
        "programs": ["python3", "git"],
        "build_commands": PYTHON_ENVIRONMENT,
        "starter_files": {"app/main.py": PYTHON_APP},
        "start_command": "if [ -f app/main.py ]; then cd app && exec python main.py; fi",
    },
    {
        "slug": "fullstack",
        "name": "Full-stack",
        "description": "Node.js 20 and Python 3 with pip and venv, and a PostgreSQL client (psql) for your "
        "database. An app in ~/app (npm run dev) starts by itself after every resume.",
        "position": 30,
        "base_image": "node:20-bookworm",
        "apt_packages": ["python3", "python3-venv", "python3-pip", "postgresql-client"],
        "programs": ["node", "npm", "python3", "psql", "git"],
        "build_commands": PYTHON_ENVIRONMENT,
        "start_command": NODE_START,
    },
    {
        "slug": "blank",
        "name": "Blank",
        "description": "A plain Debian system with a shell and git: bring your own tools.",
        "position": 40,
        "base_image": "debian:bookworm",
        "apt_packages": ["git", "curl", "ca-certificates"],
        "programs": ["git"],
    },
]
