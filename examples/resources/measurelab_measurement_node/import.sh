# A node is imported by the name its agent registered with (or by its
# controller id). Importing adopts the node with the labels it has now.
terraform import measurelab_measurement_node.mscs n1
