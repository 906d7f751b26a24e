"""The GPU check (issue 16): `bash bench/gpu_check.sh` on a machine with an NVIDIA GPU; see bench/gpu/check.py."""
