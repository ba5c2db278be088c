"""`nas evolve` (being written)."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("evolve", help="(being written)")
    parser.set_defaults(func=lambda args: 1)
    return parser
