# The GPU box, its data volume and who may reach it.

data "aws_ami" "dlami" {
  count       = var.ami_id == null ? 1 : 0
  most_recent = true
  owners      = var.ami_owners
  filter {
    name   = "name"
    values = [var.ami_name_pattern]
  }
  filter {
    name   = "architecture"
    values = ["x86_64"]
  }
}

data "aws_subnet" "given" {
  count = var.subnet_id == null ? 0 : 1
  id    = var.subnet_id
}

data "aws_vpc" "default" {
  count   = var.subnet_id == null ? 1 : 0
  default = true
}

data "aws_ebs_volume" "existing" {
  count = var.data_volume_id == null ? 0 : 1
  filter {
    name   = "volume-id"
    values = [var.data_volume_id]
  }
}

# Not every zone offers g5: pick one that does unless something else already decides.
data "aws_ec2_instance_type_offerings" "zones" {
  count         = var.subnet_id == null && var.data_volume_id == null && var.availability_zone == null ? 1 : 0
  location_type = "availability-zone"
  filter {
    name   = "instance-type"
    values = [var.instance_type]
  }
}

locals {
  ami_id = var.ami_id != null ? var.ami_id : data.aws_ami.dlami[0].id
  vpc_id = var.subnet_id != null ? data.aws_subnet.given[0].vpc_id : data.aws_vpc.default[0].id
  availability_zone = (
    var.subnet_id != null ? data.aws_subnet.given[0].availability_zone :
    var.data_volume_id != null ? data.aws_ebs_volume.existing[0].availability_zone :
    var.availability_zone != null ? var.availability_zone :
    sort(data.aws_ec2_instance_type_offerings.zones[0].locations)[0]
  )
  data_volume_id = var.data_volume_id != null ? var.data_volume_id : aws_ebs_volume.data[0].id
  # Attached as /dev/sdf; on Nitro (all g5) it shows up as an NVMe disk whose serial is the
  # volume id, which is how the user data finds it.
  data_device_name = "/dev/sdf"
}

resource "aws_key_pair" "this" {
  key_name_prefix = "${var.name}-"
  public_key      = var.ssh_public_key
}

resource "aws_security_group" "ssh" {
  name_prefix = "${var.name}-ssh-"
  description = "SSH to the trainctl GPU box from allowed_ssh_cidrs only"
  vpc_id      = local.vpc_id

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  for_each          = toset(var.allowed_ssh_cidrs)
  security_group_id = aws_security_group.ssh.id
  description       = "SSH from ${each.value}"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "all" {
  #checkov:skip=CKV_AWS_382:The box pulls pip wheels, CUDA packages and S3 objects from the internet; egress cannot be enumerated.
  security_group_id = aws_security_group.ssh.id
  description       = "Outbound to pip mirrors, S3 and the package archives"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_ebs_volume" "data" {
  #checkov:skip=CKV_AWS_189:Encrypted with the account's AWS-managed EBS key; a customer key is the user's choice (set it as the account's EBS default).
  count             = var.data_volume_id == null ? 1 : 0
  availability_zone = local.availability_zone
  size              = var.data_volume_size
  type              = "gp3"
  iops              = var.data_volume_iops
  throughput        = var.data_volume_throughput
  encrypted         = true
  tags              = { Name = "${var.name}-data" }
}

resource "aws_instance" "gpu" {
  #checkov:skip=CKV_AWS_88:The controller reaches the box over SSH; the security group admits only allowed_ssh_cidrs.
  #checkov:skip=CKV_AWS_126:Detailed monitoring bills per metric; the agent's heartbeats already report GPU and host health every 30 s.
  ami                    = local.ami_id
  instance_type          = var.instance_type
  availability_zone      = var.subnet_id == null ? local.availability_zone : null
  subnet_id              = var.subnet_id
  key_name               = aws_key_pair.this.key_name
  vpc_security_group_ids = [aws_security_group.ssh.id]
  iam_instance_profile   = aws_iam_instance_profile.box.name
  ebs_optimized          = true

  associate_public_ip_address = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 2 # containers on the box still reach IMDSv2
  }

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.root_volume_size
    encrypted             = true
    delete_on_termination = true
  }

  dynamic "instance_market_options" {
    for_each = var.use_spot ? [1] : []
    content {
      market_type = "spot"
      spot_options {
        spot_instance_type             = "persistent"
        instance_interruption_behavior = "stop"
        max_price                      = var.spot_max_price
      }
    }
  }

  user_data = join("\n", [
    "#!/bin/bash",
    "# Settings rendered by Terraform for the script below.",
    "export TRAINCTL_DATA_VOLUME_ID='${local.data_volume_id}'",
    "export TRAINCTL_DATA_DEVICE='${local.data_device_name}'",
    "export TRAINCTL_MOUNT_POINT='${var.mount_point}'",
    "export TRAINCTL_OWNER='${var.ssh_user}'",
    file("${path.module}/user_data.sh"),
  ])

  tags = { Name = "${var.name}-gpu" }
}

resource "aws_volume_attachment" "data" {
  device_name = local.data_device_name
  volume_id   = local.data_volume_id
  instance_id = aws_instance.gpu.id
  # Never force-detach a mounted filesystem: destroying the attachment does nothing, and the
  # instance's termination (a clean OS shutdown) releases the volume, which is then kept.
  skip_destroy = true
}
