# Several masters: RDS PostgreSQL for their shared state (var.create_database) and, with
# var.master_count > 1, an internal network load balancer in front of them, so the edge and the
# nodes keep one master URL however the masters come and go. docs/operations.md#several-masters.

locals {
  shared_masters = var.master_count > 1
  # The address every client of the API uses.
  master_url         = local.shared_masters ? "http://${aws_lb.master[0].dns_name}:7070" : "http://${aws_instance.master[0].private_ip}:7070"
  database_parameter = coalesce(var.database_url_parameter_name, "/${var.name}/database-url")
  # Where the master keeps the RDS certificate authorities, to verify the database's certificate.
  database_ca_file = "/etc/shadowd/rds-ca.pem"
}

data "aws_subnet" "instances" {
  id = var.subnet_id
}

# --- RDS PostgreSQL ---------------------------------------------------------------------------

resource "aws_db_subnet_group" "state" {
  count       = var.create_database ? 1 : 0
  name        = "${var.name}-state"
  description = "Shadow ${var.name}: the masters' database"
  subnet_ids  = var.database_subnet_ids
  tags        = local.tags

  lifecycle {
    precondition {
      condition     = length(var.database_subnet_ids) >= 2
      error_message = "create_database needs database_subnet_ids in at least two availability zones."
    }
  }
}

resource "aws_security_group" "database" {
  count       = var.create_database ? 1 : 0
  name        = "${var.name}-database"
  description = "Shadow database: PostgreSQL from the masters only"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-database" })
}

resource "aws_vpc_security_group_ingress_rule" "database_from_masters" {
  count                        = var.create_database ? 1 : 0
  security_group_id            = aws_security_group.database[0].id
  description                  = "PostgreSQL from the masters"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.master.id
}

resource "aws_vpc_security_group_egress_rule" "master_to_database" {
  count                        = var.create_database ? 1 : 0
  security_group_id            = aws_security_group.master.id
  description                  = "Master to its PostgreSQL database"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.database[0].id
}

resource "aws_db_parameter_group" "state" {
  count       = var.create_database ? 1 : 0
  name        = "${var.name}-state"
  family      = "postgres16"
  description = "Shadow ${var.name}: TLS only, slow statements and connections logged"
  tags        = local.tags

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }
  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }
  parameter {
    name  = "log_connections"
    value = "1"
  }
}

resource "random_password" "database" {
  count = var.create_database ? 1 : 0
  # Letters and digits only: it goes into a URL.
  length  = 40
  special = false
}

resource "aws_db_instance" "state" {
  #checkov:skip=CKV_AWS_161:The masters log in with a password kept in SSM Parameter Store (SecureString); IAM authentication tokens would need a refresh the masters do not do.
  #checkov:skip=CKV_AWS_118:Enhanced monitoring needs its own IAM role and costs extra; CloudWatch's standard RDS metrics and Performance Insights are on.
  #checkov:skip=CKV2_AWS_30:Slow statements (over 1 s) and connections are logged through the parameter group; logging every statement would log every lease renewal.
  count                               = var.create_database ? 1 : 0
  identifier                          = "${var.name}-state"
  engine                              = "postgres"
  engine_version                      = "16"
  instance_class                      = var.database_instance_class
  allocated_storage                   = var.database_storage_gb
  storage_type                        = "gp3"
  storage_encrypted                   = true
  kms_key_id                          = aws_kms_key.shadow.arn
  db_name                             = "shadow"
  username                            = "shadow"
  password                            = random_password.database[0].result
  multi_az                            = var.database_multi_az
  db_subnet_group_name                = aws_db_subnet_group.state[0].name
  vpc_security_group_ids              = [aws_security_group.database[0].id]
  parameter_group_name                = aws_db_parameter_group.state[0].name
  publicly_accessible                 = false
  backup_retention_period             = var.database_backup_retention_days
  copy_tags_to_snapshot               = true
  deletion_protection                 = true
  skip_final_snapshot                 = false
  final_snapshot_identifier           = "${var.name}-state-final"
  auto_minor_version_upgrade          = true
  enabled_cloudwatch_logs_exports     = ["postgresql", "upgrade"]
  performance_insights_enabled        = true
  performance_insights_kms_key_id     = aws_kms_key.shadow.arn
  iam_database_authentication_enabled = false
  tags                                = merge(local.tags, { Name = "${var.name}-state" })
}

# The masters read the whole URL (with the password) at every start, as they read the API token.
resource "aws_ssm_parameter" "database_url" {
  count       = var.create_database ? 1 : 0
  name        = local.database_parameter
  description = "Shadow ${var.name}: the masters' database (SHADOW_DATABASE_URL)"
  type        = "SecureString"
  key_id      = aws_kms_key.shadow.arn
  # sslrootcert: the master verifies the server against the RDS CAs (fetched by shadow-fetch-token).
  value = "postgres://shadow:${random_password.database[0].result}@${aws_db_instance.state[0].endpoint}/shadow?sslmode=require&sslrootcert=${local.database_ca_file}"
  tags  = local.tags
}

# --- The masters' internal load balancer ------------------------------------------------------

resource "aws_lb" "master" {
  #checkov:skip=CKV_AWS_91:A TCP listener has no access logs (NLB logs TLS listeners only); the masters log every request.
  #checkov:skip=CKV_AWS_150:Deletion protection would make `terraform destroy` of a cluster fail; the load balancer holds no data.
  #checkov:skip=CKV2_AWS_28:Internal network load balancer, not an ALB: no WAF in front of it.
  #checkov:skip=CKV2_AWS_20:TCP to the masters inside the VPC; there is no HTTP listener to redirect.
  count                            = local.shared_masters ? 1 : 0
  name                             = "${var.name}-master"
  internal                         = true
  load_balancer_type               = "network"
  subnets                          = [var.subnet_id]
  enable_cross_zone_load_balancing = true
  tags                             = local.tags
}

resource "aws_lb_target_group" "master" {
  count    = local.shared_masters ? 1 : 0
  name     = "${var.name}-master"
  port     = 7070
  protocol = "TCP"
  vpc_id   = var.vpc_id
  # A dying master's connections end quickly; clients move to another master on their own.
  deregistration_delay = 5
  tags                 = local.tags

  health_check {
    protocol            = "HTTP"
    path                = "/healthz"
    interval            = 5
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_target_group_attachment" "master" {
  count            = local.shared_masters ? var.master_count : 0
  target_group_arn = aws_lb_target_group.master[0].arn
  target_id        = aws_instance.master[count.index].id
  port             = 7070
}

resource "aws_lb_listener" "master" {
  #checkov:skip=CKV_AWS_2:Plain TCP inside the VPC, as between the programs everywhere else in this module.
  count             = local.shared_masters ? 1 : 0
  load_balancer_arn = aws_lb.master[0].arn
  port              = 7070
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.master[0].arn
  }
}

# Through the load balancer, traffic reaches the masters from addresses in the instances' subnet
# (the load balancer's own, for health checks, and the clients' preserved addresses), not from a
# security group the rules could name: the masters take 7070 from that subnet, where only this
# cluster's instances should live, and the edge and the nodes may send to it.
resource "aws_vpc_security_group_ingress_rule" "master_health_checks" {
  count             = local.shared_masters ? 1 : 0
  security_group_id = aws_security_group.master.id
  description       = "Load balancer health checks of the master API"
  ip_protocol       = "tcp"
  from_port         = 7070
  to_port           = 7070
  cidr_ipv4         = data.aws_subnet.instances.cidr_block
}

resource "aws_vpc_security_group_egress_rule" "to_master_lb" {
  for_each          = local.shared_masters ? { edge = aws_security_group.edge.id, node = aws_security_group.node.id } : {}
  security_group_id = each.value
  description       = "${each.key == "edge" ? "Edge" : "Node"} to the masters' load balancer"
  ip_protocol       = "tcp"
  from_port         = 7070
  to_port           = 7070
  cidr_ipv4         = data.aws_subnet.instances.cidr_block
}
