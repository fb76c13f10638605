//! `measurelab_measurement_task`: one measurement task, by name or id.

use async_trait::async_trait;
use tf_provider::schema::{AttributeConstraint, Block, Description, Schema};
use tf_provider::value::ValueEmpty;
use tf_provider::{AttributePath, DataSource, Diagnostics};

use super::views::{lookup_attributes, task_fields, TaskView};
use crate::diagnostics::{self, Operation};
use crate::shared::Shared;

/// The data source implementation.
pub struct MeasurementTaskDataSource {
    shared: Shared,
}

impl MeasurementTaskDataSource {
    /// A data source that uses the provider's client.
    pub fn new(shared: Shared) -> Self {
        MeasurementTaskDataSource { shared }
    }
}

#[async_trait]
impl DataSource for MeasurementTaskDataSource {
    type State<'a> = TaskView;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Schema {
            version: 1,
            block: Block {
                description: Description::markdown(
                    "Reads one multicast measurement task by name or id: its parameters, status and \
                     newest result id. Fails if there is no such task. The results themselves come from \
                     the `measurelab_results` data source.",
                ),
                attributes: lookup_attributes(
                    &task_fields(),
                    &[(
                        "name",
                        AttributeConstraint::Required,
                        "Name (or id) of the task. Read back as the task's name.",
                    )],
                ),
                ..Default::default()
            },
        })
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        config: Self::State<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<Self::State<'a>> {
        let client = self.shared.client(diags)?;
        let name = config.name.as_ref_option().cloned().unwrap_or_default();
        match client.get_task(&name).await {
            Ok(task) => Some(TaskView::from(&task)),
            Err(err) if err.is_not_found() => {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new("name"),
                    "No such measurement task",
                    format!(
                        "The controller has no measurement task named (or with id) {name:?}.\n\nWhat to \
                         do: check the name against the `measurelab_measurement_tasks` data source or \
                         `GET /v1/tasks`."
                    ),
                );
                None
            }
            Err(err) => {
                diagnostics::client_error(diags, &err, Operation::Read("measurement task"));
                None
            }
        }
    }
}
