# A measurement task is imported by its name (or its controller id).
terraform import measurelab_measurement_task.every_5_min every-5-min
