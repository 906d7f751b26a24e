# Copy, edit, then: ctl provision --var-file my.tfvars
# Only the first two are required; everything else shows its default.

ssh_public_key    = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleExampleExampleExampleExampleExample you@laptop"
allowed_ssh_cidrs = ["203.0.113.7/32"] # your address; a /0 is refused unless allow_ssh_from_anywhere = true

# name          = "trainctl"
# region        = "us-east-1"
# instance_type = "g5.2xlarge"
# ami_id        = null # null: newest AWS Deep Learning AMI (PyTorch, Ubuntu 22.04)
# use_spot      = false

# data_volume_size       = 300
# data_volume_iops       = 3000
# data_volume_throughput = 250
# mount_point            = "/mnt/training"

# create_bucket    = true
# bucket_name      = null # null: trainctl-<account>-<region>
# runs_prefix      = "training-runs"
# model_prefixes   = ["models"]
# dataset_prefixes = ["datasets"]

# enable_watcher          = true
# watcher_schedule        = "rate(1 minute)"
# slack_webhook_parameter = "/trainctl/slack-webhook"
