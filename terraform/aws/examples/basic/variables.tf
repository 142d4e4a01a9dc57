variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "name" {
  description = "Name of the cluster (prefixes every resource)."
  type        = string
  default     = "shadow"
}

variable "release_base_url" {
  description = "HTTPS directory holding the Linux binaries shadow-master, shadow-nodeproxy and shadow-edgeproxy."
  type        = string
}

variable "binary_sha256" {
  description = "SHA-256 of the binaries, keyed master, nodeproxy, edgeproxy."
  type        = map(string)
  default     = {}
}

variable "node_count" {
  description = "Number of nodes."
  type        = number
  default     = 2
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
  description = "Instance type of the nodes."
  type        = string
  default     = "t3.medium"
}

variable "ami_id" {
  description = "AMI; null = the latest Debian 12."
  type        = string
  default     = null
}

variable "ssh_key_name" {
  description = "EC2 key pair for SSH; null = none."
  type        = string
  default     = null
}

variable "ssh_cidr_blocks" {
  description = "Networks allowed to SSH to the instances."
  type        = list(string)
  default     = []
}

variable "domain" {
  description = "Parent domain of the apps (e.g. apps.example.com); empty = none."
  type        = string
  default     = ""
}

variable "route53_zone_id" {
  description = "Route 53 zone for the domain's records; null = manage DNS yourself."
  type        = string
  default     = null
}
