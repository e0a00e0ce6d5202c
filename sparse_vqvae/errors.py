"""The errors a user can cause and fix (bad files, missing data), in one module with no imports: the pipeline's
stages catch them to print one clear line, and must not depend on the model code to do so."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, or of another kind."""


class CodeStoreError(ValueError):
    """A code store is missing, truncated, of another format version, or of another model."""


class CodecError(ValueError):
    """A compressed file is not one, is of another version or model, or is truncated or corrupt."""


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where the configuration points."""


class NotOurFolderError(FileExistsError):
    """A writer was asked to delete or replace a folder that is not its own output."""
