"""Type stub of the private native module fastlm._C (use the fastlm package API)."""

__version__: str
