# ---- where and what -------------------------------------------------------------------------

variable "name" {
  description = "Name prefix of every resource (and the Stack tag)."
  type        = string
  default     = "trainctl"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name must be 2-31 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "region" {
  description = "AWS region."
  type        = string
  default     = "us-east-1"
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}

variable "endpoints" {
  description = "Service endpoint overrides (keys: ec2 s3 iam sts lambda events ssm logs). Empty for AWS itself."
  type        = map(string)
  default     = {}
}

# ---- the instance ---------------------------------------------------------------------------

variable "instance_type" {
  description = "A g5 size: the trainer and its memory budget assume an A10G (24 GB) per GPU."
  type        = string
  default     = "g5.2xlarge"
  validation {
    condition     = can(regex("^g5\\.[0-9]*x?large$", var.instance_type))
    error_message = "instance_type must be a g5 size, e.g. g5.xlarge, g5.2xlarge, g5.12xlarge."
  }
}

variable "ami_id" {
  description = "AMI to boot. Null looks up the newest AMI named ami_name_pattern from ami_owners."
  type        = string
  default     = null
}

variable "ami_name_pattern" {
  description = "Name filter of the AWS Deep Learning AMI used when ami_id is null."
  type        = string
  default     = "Deep Learning OSS Nvidia Driver AMI GPU PyTorch * (Ubuntu 22.04) *"
}

variable "ami_owners" {
  description = "Owners searched for ami_name_pattern."
  type        = list(string)
  default     = ["amazon"]
}

variable "ssh_user" {
  description = "Login user of the AMI (ubuntu on the Deep Learning AMI)."
  type        = string
  default     = "ubuntu"
}

variable "ssh_public_key" {
  description = "OpenSSH public key installed as the instance's key pair (the text, not a path)."
  type        = string
  validation {
    condition     = can(regex("^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp[0-9]+) [A-Za-z0-9+/=]+", var.ssh_public_key))
    error_message = "ssh_public_key must be an OpenSSH public key line (ssh-ed25519 AAAA... or ssh-rsa AAAA...), not a file path."
  }
}

variable "allowed_ssh_cidrs" {
  description = "CIDRs allowed to reach SSH (port 22). No default: say who may log in."
  type        = list(string)
  validation {
    condition     = length(var.allowed_ssh_cidrs) > 0 && alltrue([for c in var.allowed_ssh_cidrs : can(cidrhost(c, 0))])
    error_message = "allowed_ssh_cidrs must list at least one valid CIDR, e.g. [\"203.0.113.7/32\"]."
  }
  validation {
    condition     = var.allow_ssh_from_anywhere || !anytrue([for c in var.allowed_ssh_cidrs : endswith(c, "/0")])
    error_message = "allowed_ssh_cidrs opens SSH to the whole internet (a /0); use your own address/32, or set allow_ssh_from_anywhere = true if you really mean it."
  }
}

variable "allow_ssh_from_anywhere" {
  description = "Permit a /0 in allowed_ssh_cidrs. Off unless you explicitly mean it."
  type        = bool
  default     = false
}

variable "subnet_id" {
  description = "Subnet for the instance. Null uses the default VPC's subnet in the chosen availability zone."
  type        = string
  default     = null
}

variable "availability_zone" {
  description = "Zone for the instance and data volume when neither subnet_id nor data_volume_id decides it."
  type        = string
  default     = null
}

variable "root_volume_size" {
  description = "Root volume size in GB (the AMI's CUDA stack needs ~100)."
  type        = number
  default     = 120
}

variable "use_spot" {
  description = "Run as a persistent spot instance that stops (not terminates) on interruption."
  type        = bool
  default     = false
}

variable "spot_max_price" {
  description = "Highest hourly spot price in USD; null caps at the on-demand price."
  type        = string
  default     = null
}

# ---- the data volume ------------------------------------------------------------------------

variable "data_volume_id" {
  description = "Attach this existing volume (kept by an earlier `ctl destroy`) instead of creating one."
  type        = string
  default     = null
}

variable "data_volume_size" {
  description = "Data volume size in GB."
  type        = number
  default     = 300
}

variable "data_volume_iops" {
  description = "gp3 IOPS (3000 is the free baseline)."
  type        = number
  default     = 3000
  validation {
    condition     = var.data_volume_iops >= 3000 && var.data_volume_iops <= 16000
    error_message = "data_volume_iops must be between 3000 and 16000 for gp3."
  }
}

variable "data_volume_throughput" {
  description = "gp3 throughput in MB/s (125 is the free baseline)."
  type        = number
  default     = 250
  validation {
    condition     = var.data_volume_throughput >= 125 && var.data_volume_throughput <= 1000
    error_message = "data_volume_throughput must be between 125 and 1000 MB/s for gp3."
  }
}

variable "mount_point" {
  description = "Where the user data mounts the data volume."
  type        = string
  default     = "/mnt/training"
}

# ---- the store ------------------------------------------------------------------------------

variable "create_bucket" {
  description = "Create the store bucket (true) or use the existing bucket_name (false)."
  type        = bool
  default     = true
}

variable "manage_existing_bucket" {
  description = "With create_bucket = false, still manage the bucket's public-access block, encryption, versioning, lifecycle and policy."
  type        = bool
  default     = false
}

variable "bucket_name" {
  description = "Store bucket. Null with create_bucket derives <name>-<account>-<region>."
  type        = string
  default     = null
  validation {
    condition     = var.bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name (3-63 lowercase letters, digits, dots, dashes)."
  }
}

variable "store_require_tls" {
  description = "Bucket policy denying every request not made over TLS. Off only for plain-HTTP emulators."
  type        = bool
  default     = true
}

variable "runs_prefix" {
  description = "Prefix of the run store inside the bucket: the only place the instance may write."
  type        = string
  default     = "training-runs"
}

variable "model_prefixes" {
  description = "Prefixes the instance may read base models from."
  type        = list(string)
  default     = ["models"]
}

variable "dataset_prefixes" {
  description = "Prefixes the instance may read datasets from."
  type        = list(string)
  default     = ["datasets"]
}

variable "log_chunk_expiry_days" {
  description = "Expire log chunks (objects tagged trainctl-kind=log-chunk) after this many days."
  type        = number
  default     = 90
}

variable "noncurrent_version_expiry_days" {
  description = "Expire overwritten versions (heartbeats, progress) after this many days."
  type        = number
  default     = 7
}

# ---- the watcher ----------------------------------------------------------------------------

variable "enable_watcher" {
  description = "Create the watcher Lambda and its schedule."
  type        = bool
  default     = true
}

variable "watcher_zip_path" {
  description = "Zip of the watcher (built by `ctl lambda-zip`; `ctl provision` builds and sets it)."
  type        = string
  default     = null
  validation {
    condition     = !var.enable_watcher || var.watcher_zip_path != null
    error_message = "watcher_zip_path is required when enable_watcher is true: run `ctl lambda-zip` (or `ctl provision`, which builds it)."
  }
}

variable "enable_push_events" {
  description = "Notify an SQS queue of each run's _error/_complete so the watcher alerts in seconds (it owns the bucket's notification configuration)."
  type        = bool
  default     = true
}

variable "enable_slack_buttons" {
  description = "Snooze 4h / Stop run buttons on alerts: a Lambda function URL for your Slack app's Interactivity Request URL."
  type        = bool
  default     = false
}

variable "slack_signing_secret_parameter" {
  description = "SSM SecureString holding the Slack app's signing secret (its value never passes through Terraform)."
  type        = string
  default     = "/trainctl/slack-signing-secret"
}

variable "watcher_schedule" {
  description = "EventBridge schedule of the sweep."
  type        = string
  default     = "rate(1 minute)"
}

variable "watcher_runtime" {
  description = "Lambda Python runtime."
  type        = string
  default     = "python3.12"
}

variable "watcher_log_retention_days" {
  description = "Retention of the watcher's CloudWatch logs."
  type        = number
  default     = 30
}

variable "slack_webhook_parameter" {
  description = "SSM SecureString holding the Slack webhook URL (its value never passes through Terraform)."
  type        = string
  default     = "/trainctl/slack-webhook"
}

variable "create_slack_webhook_parameter" {
  description = "Create the parameter with a placeholder you then overwrite with `aws ssm put-parameter --overwrite`."
  type        = bool
  default     = true
}

variable "watcher_write_keys" {
  description = "Keys under runs_prefix the watcher may write: its per-run alert ledgers and the done index, nothing else."
  type        = list(string)
  default     = ["*/_alerts.json", "_index/*"]
}
