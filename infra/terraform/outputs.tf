output "instance_id" {
  description = "The GPU box: pass it to `ctl launch --existing`."
  value       = aws_instance.gpu.id
}

output "public_ip" {
  description = "Public IPv4 address of the box."
  value       = aws_instance.gpu.public_ip
}

output "public_dns" {
  description = "Public DNS name of the box."
  value       = aws_instance.gpu.public_dns
}

output "ssh_user" {
  description = "Login user of the AMI."
  value       = var.ssh_user
}

output "region" {
  description = "Region of every resource."
  value       = var.region
}

output "availability_zone" {
  description = "Zone of the box and its data volume."
  value       = local.availability_zone
}

output "data_volume_id" {
  description = "The data volume mounted at mount_point."
  value       = local.data_volume_id
}

output "mount_point" {
  description = "Where the data volume is mounted on the box."
  value       = var.mount_point
}

output "store_url" {
  description = "The run store for `--store`."
  value       = "s3://${local.bucket_name}/${local.runs_prefix}"
}

output "watcher_function" {
  description = "Name of the watcher Lambda (null when disabled)."
  value       = var.enable_watcher ? aws_lambda_function.watcher[0].function_name : null
}

output "slack_webhook_parameter" {
  description = "SSM parameter to put the Slack webhook URL in."
  value       = var.enable_watcher ? local.ssm_param_name : null
}

locals {
  bucket_setting_addresses = [for r in [
    "aws_s3_bucket_public_access_block", "aws_s3_bucket_ownership_controls",
    "aws_s3_bucket_server_side_encryption_configuration", "aws_s3_bucket_versioning",
    "aws_s3_bucket_lifecycle_configuration", "aws_s3_bucket_policy",
  ] : "${r}.store[0]"]
}

# What `ctl destroy` keeps by default, with the variables that re-adopt it on the next provision.
# Only what this state manages is listed. A kept bucket keeps its settings too: destroying them
# would strip its public-access block and lifecycle while the data stays.
output "kept_on_destroy" {
  description = "Resources a default destroy keeps: state addresses, id, and the tfvars that re-adopt them."
  value = merge(
    var.data_volume_id == null ? {
      data_volume = {
        addresses = ["aws_ebs_volume.data[0]"]
        id        = aws_ebs_volume.data[0].id
        reuse     = { data_volume_id = aws_ebs_volume.data[0].id }
      }
    } : {},
    local.manage_bucket ? {
      store_bucket = {
        addresses = concat(var.create_bucket ? ["aws_s3_bucket.store[0]"] : [], local.bucket_setting_addresses)
        id        = local.bucket_name
        reuse     = { create_bucket = false, manage_existing_bucket = true, bucket_name = local.bucket_name }
      }
    } : {},
    var.enable_watcher && var.create_slack_webhook_parameter ? {
      slack_webhook_parameter = {
        addresses = ["aws_ssm_parameter.slack_webhook[0]"]
        id        = local.ssm_param_name
        reuse     = { create_slack_webhook_parameter = false }
      }
    } : {},
  )
}

output "events_queue" {
  description = "The queue the bucket notifies of _error/_complete: `ctl watch --events sqs://<this>` (null when off)."
  value       = local.push_events ? aws_sqs_queue.events[0].name : null
}

output "slack_interactivity_url" {
  description = "Paste into your Slack app: Interactivity & Shortcuts > Request URL (null when enable_slack_buttons is off)."
  value       = local.interact ? aws_lambda_function_url.interact[0].function_url : null
}
