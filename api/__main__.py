"""Run the API server: ``python -m api`` (or ``maas api``), configured by MAAS_* variables."""

from api.server import serve
from core.settings import load_settings

if __name__ == "__main__":
    serve(load_settings())
