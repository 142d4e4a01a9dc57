variable "name" {
  description = "Name of this Shadow cluster: prefixes every resource and tags them. Lower-case letters, digits and '-'."
  type        = string
  default     = "shadow"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,23}$", var.name))
    error_message = "name must be 1 to 24 lower-case letters, digits or '-', starting with a letter."
  }
}

variable "vpc_id" {
  description = "The VPC the instances run in."
  type        = string
}

variable "subnet_id" {
  description = "The subnet of every instance. One subnet, so one availability zone: an EBS volume can only attach to instances in its zone. The instances need a way out (a public IP from the subnet, or a NAT gateway) for packages, images, S3 and SSM."
  type        = string
}

variable "architecture" {
  description = "CPU architecture of the instances and of the default AMI: x86_64 or arm64 (pick matching instance types and binaries)."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be x86_64 or arm64."
  }
}

variable "ami_id" {
  description = "AMI of every instance; null = the latest official Debian 12 image for var.architecture. The bootstrap expects Debian 12 (apt, systemd, cloud-init)."
  type        = string
  default     = null
}

variable "master_instance_type" {
  description = "Instance type of the master."
  type        = string
  default     = "t3.small"
}

variable "edge_instance_type" {
  description = "Instance type of the edge."
  type        = string
  default     = "t3.small"
}

variable "node_instance_type" {
  description = "Instance type of the nodes (they run the apps' containers)."
  type        = string
  default     = "t3.medium"
}

variable "node_count" {
  description = "How many nodes Terraform starts from the launch template (no autoscaling group: the edge replaces dead nodes itself)."
  type        = number
  default     = 2

  validation {
    condition     = var.node_count >= 0 && floor(var.node_count) == var.node_count
    error_message = "node_count must be a whole number, 0 or more."
  }
}

variable "ssh_key_name" {
  description = "EC2 key pair for SSH as `admin`; null = no key (use var.ssh_cidr_blocks with a key, or SSM Session Manager set up outside this module)."
  type        = string
  default     = null
}

variable "ssh_cidr_blocks" {
  description = "IPv4 CIDR blocks allowed to SSH (port 22) to every instance; empty = none."
  type        = list(string)
  default     = []
}

variable "domain" {
  description = "Parent domain of the apps, e.g. apps.example.com; with route53_zone_id, `domain` and `*.domain` point at the edge. Empty = no DNS records."
  type        = string
  default     = ""
}

variable "route53_zone_id" {
  description = "Route 53 hosted zone for var.domain's records; null = manage DNS yourself (point it at the edge_public_ip output)."
  type        = string
  default     = null
}

variable "master_binary_url" {
  description = "HTTPS URL of the shadow-master binary (Linux, var.architecture) the master downloads at first boot."
  type        = string
  default     = ""

  validation {
    condition     = var.master_binary_url == "" || startswith(var.master_binary_url, "https://")
    error_message = "master_binary_url must be an https:// URL (or empty, with deb_urls.master set)."
  }
}

variable "nodeproxy_binary_url" {
  description = "HTTPS URL of the shadow-nodeproxy binary (Linux, var.architecture) every node downloads at first boot."
  type        = string
  default     = ""

  validation {
    condition     = var.nodeproxy_binary_url == "" || startswith(var.nodeproxy_binary_url, "https://")
    error_message = "nodeproxy_binary_url must be an https:// URL (or empty, with deb_urls.nodeproxy set)."
  }
}

variable "edgeproxy_binary_url" {
  description = "HTTPS URL of the shadow-edgeproxy binary (Linux, var.architecture) the edge downloads at first boot."
  type        = string
  default     = ""

  validation {
    condition     = var.edgeproxy_binary_url == "" || startswith(var.edgeproxy_binary_url, "https://")
    error_message = "edgeproxy_binary_url must be an https:// URL (or empty, with deb_urls.edgeproxy set)."
  }
}

variable "deb_urls" {
  description = "HTTPS URLs of .deb packages (contrib/package.sh), keyed master, nodeproxy, edgeproxy: a program listed here is installed from its package (binary, unit, /usr/bin) instead of from its *_binary_url."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.deb_urls : contains(["master", "nodeproxy", "edgeproxy"], k) && startswith(v, "https://")])
    error_message = "deb_urls keys must be master, nodeproxy or edgeproxy, and values https:// URLs."
  }
}

variable "binary_sha256" {
  description = "Expected SHA-256 (hex) of the binaries (or of the .deb packages, for programs in deb_urls), keyed master, nodeproxy, edgeproxy; a missing key skips that check. Set it: the bootstrap then refuses a tampered download."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.binary_sha256 : contains(["master", "nodeproxy", "edgeproxy"], k) && can(regex("^[0-9a-f]{64}$", v))])
    error_message = "binary_sha256 keys must be master, nodeproxy or edgeproxy, and values 64 lower-case hex digits."
  }
}

variable "master_root_volume_gb" {
  description = "Root volume of the master (GB); its SQLite state lives there."
  type        = number
  default     = 16
}

variable "edge_root_volume_gb" {
  description = "Root volume of the edge (GB)."
  type        = number
  default     = 16
}

variable "node_root_volume_gb" {
  description = "Root volume of each node (GB): the apps' images and `local` volumes live there."
  type        = number
  default     = 40
}

variable "bucket_name" {
  description = "Name of the S3 bucket for `s3` volume snapshots and master backups; null = a unique name from var.name."
  type        = string
  default     = null
}

variable "force_destroy_bucket" {
  description = "Let `terraform destroy` delete the bucket with the apps' data in it. Keep false outside experiments."
  type        = bool
  default     = false
}

variable "noncurrent_version_retention_days" {
  description = "Days an overwritten or deleted object version (an old snapshot, an old master backup) is kept before it expires."
  type        = number
  default     = 30
}

variable "api_token_parameter_name" {
  description = "SSM parameter (SecureString) holding the API token; null = /<name>/api-token."
  type        = string
  default     = null
}

variable "detailed_monitoring" {
  description = "CloudWatch detailed (1-minute) monitoring of the instances; costs extra."
  type        = bool
  default     = false
}

variable "master_env" {
  description = "Extra SHADOW_* settings for the master (docs/operations.md), written to /etc/shadowd/master.env."
  type        = map(string)
  default     = {}
}

variable "nodeproxy_env" {
  description = "Extra SHADOW_* settings for the nodes (docs/operations.md), written to /etc/shadowd/nodeproxy.env; e.g. SHADOW_NODE_CAPACITY."
  type        = map(string)
  default     = {}
}

variable "edgeproxy_env" {
  description = "Extra SHADOW_* settings for the edge, written to /etc/shadowd/edgeproxy.env."
  type        = map(string)
  default     = {}
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "master_count" {
  description = "How many masters serve the fleet. More than one needs create_database (they share PostgreSQL) and puts them behind an internal network load balancer; one master keeps SQLite on its disk unless create_database."
  type        = number
  default     = 1

  validation {
    condition     = var.master_count >= 1 && var.master_count <= 9
    error_message = "master_count must be 1 to 9."
  }
}

variable "create_database" {
  description = "Create an RDS PostgreSQL database (Multi-AZ by default) for the masters' state instead of SQLite on the master's disk. Needed for master_count > 1."
  type        = bool
  default     = false
}

variable "database_subnet_ids" {
  description = "Subnets of the RDS database, in at least two availability zones (RDS requires it, also for Multi-AZ failover); only with create_database."
  type        = list(string)
  default     = []
}

variable "database_instance_class" {
  description = "RDS instance class of the database."
  type        = string
  default     = "db.t4g.micro"
}

variable "database_multi_az" {
  description = "A standby in a second availability zone that RDS fails over to (about a minute)."
  type        = bool
  default     = true
}

variable "database_storage_gb" {
  description = "Allocated storage of the database (gp3)."
  type        = number
  default     = 20
}

variable "database_backup_retention_days" {
  description = "Days RDS keeps automated backups (point-in-time recovery)."
  type        = number
  default     = 7
}

variable "database_url_parameter_name" {
  description = "SSM parameter (SecureString) that will hold the masters' database URL; null = /<name>/database-url. Only with create_database."
  type        = string
  default     = null
}
