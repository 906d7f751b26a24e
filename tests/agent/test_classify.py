"""The cause classifier on real-world log tails (PyTorch, kernel, bitsandbytes, NCCL, boto3, HF)."""

from __future__ import annotations

import pytest

from agent.protocol.causes import REMEDIATION, classify

CONTRACT_CAUSES = {"cuda_oom", "host_oom", "nan_loss", "disk_full", "s3_access_denied", "no_credentials",
                   "missing_module", "path_missing", "nccl_error", "cuda_driver_error", "stopped_by_user",
                   "trainer_lost", "interrupted", "unknown", "artifact_missing", "command_not_found"}

TRACE = ["Traceback (most recent call last):", '  File "/mnt/training/train.py", line 212, in <module>',
         "    trainer.train()"]

# (id, log tail, exit code, signal, host facts, expected cause)
CASES = [
    ("torch2_cuda_oom", TRACE + [
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
        "22.19 GiB of which 1.05 GiB is free. Including non-PyTorch memory, this process has 21.13 GiB memory in "
        "use. If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"],
     1, None, {}, "cuda_oom"),
    ("torch1_cuda_oom", TRACE + [
        "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 22.20 GiB total capacity; "
        "19.63 GiB already allocated; 1.02 GiB free; 20.01 GiB reserved in total by PyTorch)"], 1, None, {}, "cuda_oom"),
    ("cublas_alloc", ["RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"],
     1, None, {}, "cuda_oom"),
    ("oom_then_warning_noise", ["FileNotFoundError: optional file tokenizer.model not found, falling back",
                                "RuntimeError: CUDA error: out of memory",
                                "CUDA kernel errors might be asynchronously reported at some other API call"],
     1, None, {}, "cuda_oom"),
    ("kernel_oom_killer", ["Map (num_proc=8):  53%|█████▎    | 21887/41294 [03:12<02:51, 113.2 examples/s]"],
     None, "SIGKILL", {"kernel_oom_lines": [
         "[81234.567890] Out of memory: Killed process 4242 (python) total-vm:70123456kB, anon-rss:63543210kB, "
         "file-rss:0kB, shmem-rss:0kB, UID:1000 pgtables:124345kB oom_score_adj:0"]}, "host_oom"),
    ("cgroup_oom_count", ["Tokenizing train split: 61%"], 137, None, {"oom_kill_delta": 1}, "host_oom"),
    ("datasets_worker_died", TRACE + [
        "RuntimeError: One of the subprocesses has abruptly died during map operation.To debug the error, "
        "disable multiprocessing."], 1, None, {}, "host_oom"),
    ("python_memoryerror", TRACE + ["MemoryError"], 1, None, {}, "host_oom"),
    ("hf_nan_loss_line", ["{'loss': 1.9823, 'grad_norm': 0.41, 'learning_rate': 0.0002, 'epoch': 0.1}",
                          "{'loss': nan, 'grad_norm': nan, 'learning_rate': 0.0002, 'epoch': 0.12}",
                          "ValueError: loss is not finite, stopping"], 1, None, {}, "nan_loss"),
    ("nan_from_progress", ["step 120 done"], 1, None, {"last_loss": float("inf")}, "nan_loss"),
    ("enospc_checkpoint", TRACE + ["OSError: [Errno 28] No space left on device: "
                                   "'/mnt/training/runs/x/output/checkpoint-500/optimizer.pt'"], 1, None, {},
     "disk_full"),
    ("safetensors_storage_full", ['safetensors_rust.SafetensorError: Error while serializing: IoError(Os { code: 28, '
                                  'kind: StorageFull, message: "No space left on device" })'], 1, None, {}, "disk_full"),
    ("boto_access_denied", TRACE + ["botocore.exceptions.ClientError: An error occurred (AccessDenied) when calling "
                                    "the PutObject operation: Access Denied"], 1, None, {}, "s3_access_denied"),
    ("boto_403_head", ["botocore.exceptions.ClientError: An error occurred (403) when calling the HeadObject "
                       "operation: Forbidden"], 1, None, {}, "s3_access_denied"),
    ("boto_no_credentials", ["botocore.exceptions.NoCredentialsError: Unable to locate credentials"], 1, None, {},
     "no_credentials"),
    ("boto_expired_token", ["botocore.exceptions.ClientError: An error occurred (ExpiredToken) when calling the "
                            "GetObject operation: The provided token has expired."], 1, None, {}, "no_credentials"),
    ("missing_bnb", TRACE + ["ModuleNotFoundError: No module named 'bitsandbytes'"], 1, None, {}, "missing_module"),
    ("bnb_version_import", ["ImportError: Using `bitsandbytes` 4-bit quantization requires the latest version of "
                            "bitsandbytes: `pip install -U bitsandbytes`"], 1, None, {}, "missing_module"),
    ("hf_model_path", ["OSError: /mnt/training/models/mistral-7b does not appear to have a file named config.json. "
                       "Checkout 'https://huggingface.co//mnt/training/models/mistral-7b/tree/None' for available files."],
     1, None, {}, "path_missing"),
    ("datasets_missing_file", ["FileNotFoundError: Unable to find '/mnt/training/data_prep/final_train.jsonl'"],
     1, None, {}, "path_missing"),
    ("hf_validation", ["huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name' or "
                       "'namespace/repo_name': '/mnt/training/models/x'. Use `repo_type` argument if needed."],
     1, None, {}, "path_missing"),
    ("command_not_found", ["sh: 1: accelerate: not found"], 127, None, {}, "command_not_found"),
    ("exec_enoent", ["trainctl: cannot start the trainer 'accelerate': [Errno 2] No such file or directory: "
                     "'accelerate'"], 127, None, {}, "command_not_found"),
    ("not_executable", ["bash: ./train.sh: Permission denied"], 126, None, {}, "command_not_found"),
    ("bash_not_found_exit_1", ["train.sh: line 3: deepspeed: command not found"], 1, None, {}, "command_not_found"),
    ("nccl_system_error", ["torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/"
                           "ProcessGroupNCCL.cpp:1970, unhandled system error (run with NCCL_DEBUG=INFO for details), "
                           "NCCL version 2.20.5",
                           "ncclSystemError: System call (e.g. socket, malloc) or external library call failed or "
                           "device error."], 1, None, {}, "nccl_error"),
    ("nccl_watchdog", ["[rank0]:[E ProcessGroupNCCL.cpp:563] [Rank 0] Watchdog caught collective operation timeout: "
                       "WorkNCCL(SeqNum=1, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for "
                       "600031 milliseconds before timing out."], None, "SIGABRT", {}, "nccl_error"),
    ("driver_too_old", ["RuntimeError: The NVIDIA driver on your system is too old (found version 11040). Please "
                        "update your GPU driver"], 1, None, {}, "cuda_driver_error"),
    ("no_gpus", ["RuntimeError: No CUDA GPUs are available"], 1, None, {}, "cuda_driver_error"),
    ("bnb_no_gpu_support", ["The installed version of bitsandbytes was compiled without GPU support. 8-bit "
                            "optimizers and GPU quantization are unavailable.",
                            "RuntimeError: Found no NVIDIA driver on your system."], 1, None, {}, "cuda_driver_error"),
    ("xid_fell_off_bus", ["NVRM: Xid (PCI:0000:00:1e): 79, pid=1234, GPU has fallen off the bus.",
                          "RuntimeError: CUDA error: unknown error"], 1, None, {}, "cuda_driver_error"),
    ("illegal_access", ["RuntimeError: CUDA error: an illegal memory access was encountered"], None, "SIGABRT", {},
     "cuda_driver_error"),
    ("stop_beats_text", ["RuntimeError: CUDA out of memory."], None, "SIGKILL", {"stop_requested": True},
     "stopped_by_user"),
    ("lost", [], None, None, {"trainer_lost": True}, "trainer_lost"),
    ("declared_artifact_absent", ["{'train_runtime': 3.2}"], 0, None,
     {"artifact_missing": "artifact adapter: /w/output/adapter does not exist"}, "artifact_missing"),
    ("interrupted", ["KeyboardInterrupt"], None, "SIGINT", {"agent_interrupted": True}, "interrupted"),
    ("plain_value_error", TRACE + ["ValueError: invalid literal for int() with base 10: 'abc'"], 1, None, {},
     "unknown"),
    ("sigkill_no_evidence", ["step 10"], None, "SIGKILL", {"kernel_oom_lines": []}, "unknown"),
]


@pytest.mark.parametrize("tail,code,sig,facts,cause", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_real_log_tails_map_to_cause(tail, code, sig, facts, cause):
    got, remediation, summary = classify(tail, code, sig, facts)
    assert got == cause, summary
    assert remediation == REMEDIATION[cause]
    assert summary and len(summary) <= 300 and "\n" not in summary


def test_enough_cases_and_every_cause_has_a_case():
    assert len(CASES) >= 15
    assert {c[-1] for c in CASES} == CONTRACT_CAUSES


# Causes the agent writes itself (agent.daemon.caps), never read from a log: no classifier row.
AGENT_GIVEN_CAUSES = {"runtime_cap", "cost_cap"}


def test_remediation_table_covers_the_contract():
    assert set(REMEDIATION) == CONTRACT_CAUSES | AGENT_GIVEN_CAUSES
    for cause, text in REMEDIATION.items():
        assert 20 < len(text) < 300 and "\n" not in text, cause


def test_summary_names_the_exit_and_last_line_when_unknown():
    _, _, summary = classify(["", "weird failure at step 7", ""], 3, None, {})
    assert summary == "exited with code 3; last line: weird failure at step 7"


def test_kill_with_kernel_line_for_another_process_is_not_blamed_when_exit_was_clean():
    # Kernel OOM lines only count with a kill; a trainer that exited 2 by itself was not OOM-killed.
    cause, _, _ = classify(["usage: train.py [-h]"], 2, None, {"kernel_oom_lines": ["Out of memory: Killed process 9"]})
    assert cause == "unknown"
