terraform {
  # 1.9+ for variable validations that refer to other variables.
  required_version = ">= 1.9"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.60, < 6.0"
    }
  }
}

locals {
  # Endpoint overrides are for S3-compatible or emulated AWS APIs (tests run against moto's
  # server). A normal AWS user leaves var.endpoints empty and none of the skips apply.
  custom_endpoints = length(var.endpoints) > 0
}

provider "aws" {
  region = var.region

  skip_credentials_validation = local.custom_endpoints
  skip_requesting_account_id  = local.custom_endpoints
  skip_metadata_api_check     = local.custom_endpoints
  s3_use_path_style           = local.custom_endpoints

  dynamic "endpoints" {
    for_each = local.custom_endpoints ? [var.endpoints] : []
    content {
      ec2            = lookup(endpoints.value, "ec2", null)
      s3             = lookup(endpoints.value, "s3", null)
      iam            = lookup(endpoints.value, "iam", null)
      sts            = lookup(endpoints.value, "sts", null)
      lambda         = lookup(endpoints.value, "lambda", null)
      events         = lookup(endpoints.value, "events", null)
      ssm            = lookup(endpoints.value, "ssm", null)
      cloudwatchlogs = lookup(endpoints.value, "logs", null)
      sqs            = lookup(endpoints.value, "sqs", null)
    }
  }

  default_tags {
    tags = merge({ ManagedBy = "trainctl", Stack = var.name }, var.tags)
  }
}
