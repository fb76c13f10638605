# A peer is imported by PLATFORM/PEER (each an id or a name). A generated
# private key is not imported: the controller never kept it.
terraform import measurelab_platform_peer.desk slice/desk
