/**
 * The JSON shape of texwatch's generated dashboards, typed with @grafana/schema (Grafana 11.6).
 *
 * `python -m dashboards.typecheck` embeds each generated dashboard JSON in a TypeScript module as
 * a `DashboardJson` literal and runs `tsc --strict` on it, so a field Grafana's schema does not
 * know, a wrong enum value or a missing required field fails the check.
 */
import type {
  AnnotationQuery,
  DataQuery,
  Dashboard,
  FieldConfigSource,
  Panel,
  RowPanel,
  VariableModel,
} from "@grafana/schema";
import type { Options as StatOptions } from "@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen.js";
import type { Options as TextOptions } from "@grafana/schema/dist/esm/raw/composable/text/panelcfg/x/TextPanelCfg_types.gen.js";
import type {
  FieldConfig as TimeSeriesFieldConfig,
  Options as TimeSeriesOptions,
} from "@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen.js";

/**
 * The JSON spelling of a schema type: string enums (e.g. `ThresholdsMode`) become the union of
 * their values, which is what a JSON file holds; numeric enums already accept numbers.
 */
export type Wire<T> = T extends string
  ? `${T}`
  : T extends readonly (infer U)[]
    ? Wire<U>[]
    : T extends object
      ? { [K in keyof T]: Wire<T[K]> }
      : T;

/**
 * A Prometheus panel query. @grafana/schema only has the generic `DataQuery`; these are the
 * fields the Prometheus datasource plugin reads (as in grafana-foundation-sdk's prometheus model).
 */
export interface PrometheusQuery extends DataQuery {
  expr: string;
  legendFormat?: string;
  instant?: boolean;
  range?: boolean;
  exemplar?: boolean;
  editorMode?: "code" | "builder";
  format?: "time_series" | "table" | "heatmap";
  interval?: string;
  intervalFactor?: number;
}

type PanelWith<TType extends string, TOptions, TCustom> = Omit<
  Panel,
  "type" | "options" | "fieldConfig" | "targets"
> & {
  type: TType;
  options: TOptions;
  fieldConfig: FieldConfigSource<TCustom>;
  targets: PrometheusQuery[];
};

/** A time series panel: options and custom field config from the timeseries panel schema. */
export type TimeSeriesPanel = PanelWith<"timeseries", TimeSeriesOptions, TimeSeriesFieldConfig>;

/** A stat panel: options from the stat panel schema (stat has no custom field config). */
export type StatPanel = PanelWith<"stat", StatOptions, Record<string, never>>;

/** A text panel (HTML or Markdown): options from the text panel schema; it queries nothing. */
export type TextPanel = Omit<
  Panel,
  "type" | "options" | "fieldConfig" | "targets" | "datasource"
> & {
  type: "text";
  options: TextOptions;
};

/**
 * A Prometheus annotation. The Prometheus datasource reads the query and its formatting from
 * these fields next to the generic annotation fields.
 */
export type PrometheusAnnotation = AnnotationQuery & {
  expr: string;
  step?: string;
  titleFormat?: string;
  tagKeys?: string;
  useValueForTime?: boolean;
};

/**
 * A template variable as grafana-foundation-sdk writes it: it also sets the interval variable's
 * `auto` fields (at their defaults) on every variable; Grafana ignores them on other types.
 */
export type SdkVariable = VariableModel & {
  auto?: boolean;
  auto_count?: number;
  auto_min?: string;
};

/** A texwatch dashboard: only the panel types it uses, all queries on Prometheus. */
export type DashboardJson = Wire<
  Omit<Dashboard, "panels" | "annotations" | "templating"> & {
    panels: Array<TimeSeriesPanel | StatPanel | TextPanel | RowPanel>;
    annotations: { list: PrometheusAnnotation[] };
    templating: { list: SdkVariable[] };
  }
>;
