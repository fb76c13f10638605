# A program is imported by its name (or its controller id). `source` is a local
# path the controller never sees: the first plan after an import takes it from
# the configuration, an in-place update as long as the file's SHA-256 matches
# the uploaded program's (a different file plans a replacement).
terraform import measurelab_program.hello hello
