# An appliance is imported by its name (or its controller id). The file paths
# are local and only in the configuration: the first plan after an import
# hashes them and plans a replacement if a digest differs from the stored one.
terraform import measurelab_appliance.tiny tiny-stored
