# The run store bucket: created here or an existing one named by bucket_name.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account_id    = data.aws_caller_identity.current.account_id
  partition     = data.aws_partition.current.partition
  bucket_name   = var.bucket_name != null ? var.bucket_name : "${var.name}-${local.account_id}-${var.region}"
  manage_bucket = var.create_bucket || var.manage_existing_bucket
  bucket_arn    = "arn:${local.partition}:s3:::${local.bucket_name}"
  runs_prefix   = trim(var.runs_prefix, "/")
  # Settings wait for the bucket when this state creates it.
  bucket_id = var.create_bucket ? aws_s3_bucket.store[0].id : local.bucket_name
}

resource "aws_s3_bucket" "store" {
  #checkov:skip=CKV_AWS_18:Access logging needs a second bucket; the store's own objects are the audit trail of each run.
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles cost for run logs that are reproducible; opt in outside this module.
  #checkov:skip=CKV2_AWS_62:Nothing consumes S3 event notifications; the watcher polls on a schedule.
  count  = var.create_bucket ? 1 : 0
  bucket = local.bucket_name
}

resource "aws_s3_bucket_public_access_block" "store" {
  count                   = local.manage_bucket ? 1 : 0
  bucket                  = local.bucket_id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "store" {
  count  = local.manage_bucket ? 1 : 0
  bucket = local.bucket_id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "store" {
  count  = local.manage_bucket ? 1 : 0
  bucket = local.bucket_id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "aws:kms" # the AWS-managed aws/s3 key: no key policy to maintain
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_versioning" "store" {
  count  = local.manage_bucket ? 1 : 0
  bucket = local.bucket_id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "store" {
  count  = local.manage_bucket ? 1 : 0
  bucket = local.bucket_id

  # Log chunks live at <runs>/<run-id>/logs/N.log; a prefix filter cannot reach across run ids,
  # so the agent tags chunks and this rule expires them by tag.
  rule {
    id     = "expire-old-log-chunks"
    status = "Enabled"
    filter {
      tag {
        key   = "trainctl-kind"
        value = "log-chunk"
      }
    }
    expiration {
      days = var.log_chunk_expiry_days
    }
  }

  # Heartbeats and progress are overwritten every few seconds; versioning would keep them all.
  rule {
    id     = "expire-overwritten-versions"
    status = "Enabled"
    filter {
      prefix = "${local.runs_prefix}/"
    }
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiry_days
    }
  }

  # Anywhere in the bucket (model and dataset uploads too): a dead upload's parts cost money.
  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.store]
}

data "aws_iam_policy_document" "store_tls_only" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    resources = [local.bucket_arn, "${local.bucket_arn}/*"]
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "store" {
  count      = local.manage_bucket && var.store_require_tls ? 1 : 0
  bucket     = local.bucket_id
  policy     = data.aws_iam_policy_document.store_tls_only.json
  depends_on = [aws_s3_bucket_public_access_block.store]
}
