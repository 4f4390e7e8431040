//! Checks of a CSI request's fields, with the `InvalidArgument` the spec asks for.

use tonic::Status;

pub fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message.into())
}

/// `value`, or `InvalidArgument` naming the field `what` when it is empty.
pub fn required<'a>(value: &'a str, what: &str) -> Result<&'a str, Status> {
    if value.is_empty() {
        return Err(invalid(format!("{what} is required")));
    }
    Ok(value)
}
