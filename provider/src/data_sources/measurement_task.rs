//! `measurelab_measurement_task`: one measurement task, by name or id.

use std::collections::HashMap;

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::Task;
use tf_provider::schema::{Attribute, AttributeConstraint};

use super::lookup::{configured, found, Lookup, LookupDataSource};
use super::views::{lookup_attributes, task_fields, TaskView};

/// The data source implementation.
pub type MeasurementTaskDataSource = LookupDataSource<TaskLookup>;

/// How `measurelab_measurement_task` finds and shows its task.
pub struct TaskLookup;

#[async_trait]
impl Lookup for TaskLookup {
    type State = TaskView;
    type Object = Task;

    const KIND: &'static str = "measurement task";
    const DESCRIPTION: &'static str =
        "Reads one multicast measurement task by name or id: its parameters, status and \
         newest result id. Fails if there is no such task. The results themselves come from \
         the `measurelab_results` data source.";

    fn attributes() -> HashMap<String, Attribute> {
        lookup_attributes(
            &task_fields(),
            &[(
                "name",
                AttributeConstraint::Required,
                "Name (or id) of the task. Read back as the task's name.",
            )],
        )
    }

    async fn find(client: &Client, config: &TaskView) -> Result<Option<Task>, ClientError> {
        found(client.get_task(&configured(&config.name)).await)
    }

    fn view(task: &Task) -> TaskView {
        TaskView::from(task)
    }

    fn not_found(config: &TaskView) -> String {
        let name = configured(&config.name);
        format!(
            "The controller has no measurement task named (or with id) {name:?}.\n\nWhat to \
             do: check the name against the `measurelab_measurement_tasks` data source or \
             `GET /v1/tasks`."
        )
    }
}
