"""Shared test fixtures."""
import os
import sys

# tests/ holds plain-Python reference implementations (reference_*.py) imported by tests.
sys.path.insert(0, os.path.dirname(__file__))
