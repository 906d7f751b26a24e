# The box's instance profile: read models and datasets, write only under the runs prefix.

locals {
  read_prefixes = [for p in concat(var.model_prefixes, var.dataset_prefixes) : trim(p, "/")]
}

data "aws_iam_policy_document" "box_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "box" {
  statement {
    sid       = "ListOwnPrefixes"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = flatten([for p in concat(local.read_prefixes, [local.runs_prefix]) : [p, "${p}/*"]])
    }
  }

  statement {
    sid       = "ReadModelsAndDatasets"
    actions   = ["s3:GetObject"]
    resources = [for p in local.read_prefixes : "${local.bucket_arn}/${p}/*"]
  }

  statement {
    sid = "ReadWriteRuns"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:PutObjectTagging",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${local.bucket_arn}/${local.runs_prefix}/*"]
  }
}

resource "aws_iam_role" "box" {
  name_prefix        = "${var.name}-box-"
  assume_role_policy = data.aws_iam_policy_document.box_assume.json
}

resource "aws_iam_role_policy" "box" {
  name   = "store-access"
  role   = aws_iam_role.box.id
  policy = data.aws_iam_policy_document.box.json
}

resource "aws_iam_instance_profile" "box" {
  name_prefix = "${var.name}-box-"
  role        = aws_iam_role.box.name
}
